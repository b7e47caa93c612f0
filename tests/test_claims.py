"""Published claims against a study's runs: who counts, and verdicts only where the evidence separates."""

from __future__ import annotations

import pandas as pd
import pytest

from harness import claims

ENWIK8_50K = {"data": {"name": "enwik8", "tokens": "bytes"}, "recipe": {"steps": 50_000}, "smoke": False,
              "published": "seed-enwik8-70m", "archs": {"memnls": {}, "transformer": {}}}


@pytest.mark.parametrize("expect_event, k, n, verdict", [
    (True, 1, 1, "inconclusive"),  # one seed never decides, even one that collapsed
    (False, 0, 1, "inconclusive"),
    (False, 1, 10, "consistent"),  # a single event among ten: within the detector's false alarms
    (False, 2, 10, "contradicted"),  # binomial p = 0.016 against a 2% false-alarm rate
    (True, 3, 3, "inconclusive"),  # Wilson [0.44, 1.00] does not clear 1/2
    (True, 4, 4, "reproduced"),  # Wilson [0.51, 1.00]
    (True, 0, 4, "not reproduced"),  # Wilson [0.00, 0.49]
    (False, 0, 4, "consistent"),
    (True, 3, 20, "partly reproduced"),  # real events (p = 0.007), but not the typical run
])
def test_verdicts_need_evidence_that_separates(expect_event, k, n, verdict):
    assert claims.decide(expect_event, k, n) == verdict


def test_an_inconclusive_verdict_says_how_many_seeds_would_settle_it():
    assert claims.seeds_to_settle(True, 3, 3) == 4  # 4 of 4 would be reproduced
    assert claims.seeds_to_settle(False, 0, 3) == 4
    assert claims.seeds_to_settle(True, 1, 2, most=10) is None  # at one half, no number of seeds decides


def runs_table(rows):
    return pd.DataFrame(rows, columns=["arch", "seed", "status", "steps_done"])


def test_who_counts_toward_a_claim():
    runs = runs_table([("transformer", 0, "completed", 50_000), ("transformer", 1, "completed", 50_000),
                       ("transformer", 2, "diverged", 29_000),  # broke inside the window: the claimed failure
                       ("transformer", 3, "completed", 20_000),  # stopped short of the horizon: leaves n
                       ("transformer", 4, "failed", 100),  # a crash: leaves n
                       ("memnls", 0, "completed", 50_000), ("memnls", 1, "diverged", 9_000),
                       ("memnls", 2, "completed", 50_000), ("memnls", 3, "completed", 50_000)])
    events = pd.DataFrame({"arch": ["transformer", "transformer", "memnls"], "seed": [0, 1, 2],
                           "type": ["collapse", "collapse", "spike"], "onset_step": [28_000, 5_000, 9_000]})
    verdicts = claims.evaluate(ENWIK8_50K, runs, events).set_index("arch")
    t, m = verdicts.loc["transformer"], verdicts.loc["memnls"]
    assert (t["k"], t["n"]) == (2, 3)  # seed 0's collapse and seed 2's divergence; seed 1's is at 5,000
    assert "outside that window: seed 1 at step 5,000" in t["sentence"]
    assert t["verdict"] == "inconclusive" and "seeds would settle it" in t["sentence"]
    assert (t["lo"], t["hi"]) == pytest.approx((0.2077, 0.9385), abs=1e-4)  # Wilson 95% for 2 of 3
    assert (m["k"], m["n"], m["verdict"]) == (1, 4, "inconclusive")  # the divergence counts; the spike does not
    chars = {**ENWIK8_50K, "data": {"name": "enwik8", "tokens": "chars"}}
    t = claims.evaluate(chars, runs, events).set_index("arch").loc["transformer"]
    assert t["verdict"] == "cannot test" and "its tokens are chars, not bytes" in t["sentence"]


def test_ten_healthy_seeds_and_one_false_alarm_keep_a_no_collapse_claim():
    runs = runs_table([("memnls", s, "completed", 50_000) for s in range(10)])
    events = pd.DataFrame({"arch": ["memnls"], "seed": [4], "type": ["collapse"], "onset_step": [31_000]})
    m = claims.evaluate(ENWIK8_50K, runs, events).set_index("arch").loc["memnls"]
    assert (m["k"], m["n"], m["verdict"]) == (1, 10, "consistent")
    assert "within what the detector's false alarms explain" in m["sentence"]
