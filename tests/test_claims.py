"""Published claims against a study's runs: who counts, and verdicts only where the evidence separates."""

from __future__ import annotations

import pandas as pd
import pytest

from harness import claims
from harness.contracts import BASE_VARIANT

ENWIK8_50K = {"data": {"name": "enwik8", "tokens": "bytes"}, "recipe": {"steps": 50_000}, "smoke": False,
              "published": "seed-enwik8-70m", "archs": {"memnls": {}, "transformer": {}}}


@pytest.mark.parametrize("expect_event, k, n, verdict", [
    (True, 1, 1, "inconclusive"),  # one seed never decides, even one that collapsed
    (False, 0, 1, "inconclusive"),
    (False, 1, 1, "inconclusive"),  # one event in one seed is beyond a 2% false-alarm rate, yet one seed
    (False, 2, 2, "inconclusive"),  # ... or two decide nothing (MIN_SEEDS)
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
    return pd.DataFrame(rows, columns=["arch", "seed", "status", "steps_done"]).assign(variant=BASE_VARIANT)


def events_table(columns):
    return pd.DataFrame(columns).assign(variant=BASE_VARIANT)


def test_who_counts_toward_a_claim():
    runs = runs_table([("transformer", 0, "completed", 50_000), ("transformer", 1, "completed", 50_000),
                       ("transformer", 2, "diverged", 29_000),  # broke inside the window: the claimed failure
                       ("transformer", 3, "completed", 20_000),  # stopped short of the horizon: leaves n
                       ("transformer", 4, "failed", 100),  # a crash: leaves n
                       ("memnls", 0, "completed", 50_000), ("memnls", 1, "diverged", 9_000),
                       ("memnls", 2, "completed", 50_000), ("memnls", 3, "completed", 50_000)])
    events = events_table({"arch": ["transformer", "transformer", "memnls"], "seed": [0, 1, 2],
                           "type": ["collapse", "collapse", "spike"], "onset_step": [28_000, 5_000, 9_000]})
    verdicts = claims.evaluate(ENWIK8_50K, runs, events).set_index("id")
    t, m = verdicts.loc["transformer-collapse-28k"], verdicts.loc["memnls-no-catastrophe"]
    assert (t["k"], t["n"]) == (2, 3)  # seed 0's collapse and seed 2's divergence; seed 1's is at 5,000
    assert "outside that window: seed 1 at step 5,000" in t["sentence"]
    assert t["verdict"] == "inconclusive" and "seeds would settle it" in t["sentence"]
    assert (t["lo"], t["hi"]) == pytest.approx((0.2077, 0.9385), abs=1e-4)  # Wilson 95% for 2 of 3
    assert (m["k"], m["n"], m["verdict"]) == (1, 4, "inconclusive")  # the divergence counts; the spike does not
    # the general claim between them: 1 of 4 vs 2 of 3 does not separate
    assert verdicts.loc["memnls-anti-collapse", "verdict"] == "inconclusive"
    assert set(verdicts.index) == {"transformer-collapse-28k", "memnls-no-catastrophe", "memnls-anti-collapse",
                                   "trn-matched-transformer-int5"}  # every claim whose archs the study ran
    chars = {**ENWIK8_50K, "data": {"name": "enwik8", "tokens": "chars"}}
    t = claims.evaluate(chars, runs, events).set_index("id").loc["transformer-collapse-28k"]
    assert t["verdict"] == "cannot test" and "needs enwik8 bytes data (this study: enwik8 chars)" in t["sentence"]


def test_ten_healthy_seeds_and_one_false_alarm_keep_a_no_collapse_claim():
    runs = runs_table([("memnls", s, "completed", 50_000) for s in range(10)])
    events = events_table({"arch": ["memnls"], "seed": [4], "type": ["collapse"], "onset_step": [31_000]})
    m = claims.evaluate(ENWIK8_50K, runs, events).set_index("id").loc["memnls-no-catastrophe"]
    assert (m["k"], m["n"], m["verdict"]) == (1, 10, "consistent")
    assert "within what the detector's false alarms explain" in m["sentence"]


# -- each kind on runs with a known verdict, at proxy scale (a small study on other data)

PROXY = {"data": {"name": "tinyshakespeare", "tokens": "bytes"}, "recipe": {"steps": 2_000, "grad_clip": 1.0},
         "smoke": False}
NO_EVENTS = pd.DataFrame(columns=["arch", "variant", "seed", "type", "onset_step"])


def proxy_verdicts(study=PROXY, runs=None, events=NO_EVENTS, quantization=None):
    return claims.evaluate(study, runs, events, quantization).set_index("id")


def test_more_stable_than_by_fisher_on_event_rates():
    runs = runs_table([("memnls", s, "completed", 2_000) for s in range(6)]
                      + [("transformer", s, "diverged", 900) for s in range(5)] + [("transformer", 5, "completed", 2_000)])
    v = proxy_verdicts(runs=runs).loc["memnls-anti-collapse"]
    # 0 of 6 vs 5 of 6 seeds: one two-sided test, p = 0.015 (two one-sided tests at 0.05 each erred twice as often)
    assert v["verdict"] == "cannot test" and v["proxy_verdict"] == "supported"
    assert v["scale"].startswith("proxy scale (tinyshakespeare bytes, 2,000 steps")
    assert "two-sided Fisher exact p = 0.0152" in v["sentence"]
    swapped = runs.assign(arch=runs["arch"].map({"memnls": "transformer", "transformer": "memnls"}))
    assert proxy_verdicts(runs=swapped).loc["memnls-anti-collapse", "proxy_verdict"] == "contradicted"


def test_no_clip_needed_names_the_variant_it_needs_and_decides_without_clipping():
    runs = runs_table([(a, s, "completed", 2_000) for a in ("resonance", "transformer") for s in range(4)])
    v = proxy_verdicts(runs=runs).loc["resonance-no-clip-needed"]
    assert v["proxy_verdict"] == "cannot test"
    assert "needs a grad_clip=0 variant of resonance and transformer at the study's own recipe (clip=0)" in v["sentence"]
    unclipped = {**PROXY, "recipe": {"steps": 2_000, "grad_clip": 0.0}}
    assert proxy_verdicts(unclipped, runs).loc["resonance-no-clip-needed", "proxy_verdict"] == "supported"
    broken = runs.assign(status=runs["status"].mask(runs["arch"] == "resonance", "diverged"))
    assert proxy_verdicts(unclipped, broken).loc["resonance-no-clip-needed", "proxy_verdict"] == "contradicted"


def quantization_table(arch, increases, steps=(2_000,), bits=8):
    """Per-seed increases at the first step, growing by 0.01 bits per token per 1,000 steps after it."""
    return pd.DataFrame([{"arch": arch, "variant": BASE_VARIANT, "seed": s, "step": st, "bits": bits, "bpt_increase": inc + 1e-5 * (st - steps[0])}
                         for s, inc in enumerate(increases) for st in steps])


def test_quantization_bounds_and_growth():
    runs = runs_table([("resonance", s, "completed", 2_000) for s in range(4)])
    v = proxy_verdicts(runs=runs).loc["resonance-int8"]
    assert "needs the quantization stage at 8 bits (study key quantize.bits)" in v["sentence"]
    small = quantization_table("resonance", [0.0005, 0.0010, 0.0008, 0.0007])  # mean 0.0008, well under 0.002
    assert proxy_verdicts(runs=runs, quantization=small).loc["resonance-int8", "proxy_verdict"] == "supported"
    large = quantization_table("resonance", [0.010, 0.012, 0.011, 0.013])
    assert proxy_verdicts(runs=runs, quantization=large).loc["resonance-int8", "proxy_verdict"] == "contradicted"
    trn = runs_table([("trn_hybrid", s, "completed", 2_000) for s in range(3)])
    one_step = quantization_table("trn_hybrid", [0.1, 0.2, 0.15], bits=5)
    v = proxy_verdicts(runs=trn, quantization=one_step).loc["trn-int5-grows"]
    assert "quantized at several training steps" in v["sentence"]
    growing = quantization_table("trn_hybrid", [0.1, 0.2, 0.15], steps=(500, 1_000, 2_000), bits=5)
    v = proxy_verdicts(runs=trn, quantization=growing).loc["trn-int5-grows"]
    assert v["proxy_verdict"] == "supported" and v["estimate"] == pytest.approx(0.01, rel=1e-6)


def test_transfer_by_the_interval_of_the_mean():
    runs = runs_table([("eam", s, "completed", 2_000) for s in range(4)]).assign(
        pipeline_transfer=[0.90, 0.92, 0.91, 0.93])
    v = proxy_verdicts(runs=runs).loc["eam-transfer"]
    assert v["proxy_verdict"] == "contradicted" and v["estimate"] == pytest.approx(0.915)
    high = runs.assign(pipeline_transfer=[0.985, 0.99, 0.988, 0.992])
    assert proxy_verdicts(runs=high).loc["eam-transfer", "proxy_verdict"] == "supported"


def test_a_smoke_study_gives_no_verdict_and_says_why(tmp_path):
    runs = runs_table([("eam", s, "completed", 200) for s in range(4)]).assign(pipeline_transfer=0.99)
    v = proxy_verdicts({**PROXY, "smoke": True}, runs).loc["eam-transfer"]
    assert (v["verdict"], v["proxy_verdict"]) == ("cannot test", "cannot test")
    assert "a smoke study gives no proxy verdict either" in v["sentence"]


def test_the_packaged_claims_validate_and_a_bad_file_is_named(tmp_path):
    publications, found = claims.load()
    assert "seed-enwik8-70m" in publications and len(found) == 11
    assert {c.kind for c in found} == {"events", "more_stable_than", "no_clip_needed", "quantization", "transfer"}
    bad = tmp_path / "mine.yaml"
    bad.write_text("claims:\n  - {id: x, source: me, statement: s, kind: events, archs: [a], "
                   "setting: {data: d, tokens: bytes}, params: {expect: some, types: [spike]}}\n")
    with pytest.raises(ValueError, match=r"mine.yaml: claims/0/params/expect: 'some' is not one of"):
        claims.load(bad)


def test_a_claim_in_a_users_file_reaches_the_report_with_no_code_change(tmp_path):
    from harness.aggregate import aggregate
    from harness.report.page import render
    from tests.test_aggregate import make_runs, make_study

    mine = tmp_path / "my_claims.yaml"
    mine.write_text(
        "claims:\n"
        "  - id: my-memnls-calm\n"
        "    source: my lab notebook, page 12\n"
        "    statement: 'memnls never spikes on small data'\n"
        "    kind: events\n"
        "    archs: [memnls]\n"
        "    setting: {data: tinyshakespeare, tokens: bytes, steps: 300}\n"
        "    proxy: true\n"
        "    params: {expect: none, types: [spike]}\n")
    study = {**make_study(), "smoke": False, "claims": str(mine)}
    aggregate(make_runs(tmp_path / "results", study), tmp_path / "agg", study)
    table = pd.read_csv(tmp_path / "agg" / "claims.csv").set_index("id")
    assert table.loc["my-memnls-calm", "verdict"] == "inconclusive"  # 0 of 3 seeds: Wilson [0, 0.56]
    assert table.loc["my-memnls-calm", "proxy_verdict"] == "same setting"
    render(tmp_path / "agg", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "memnls never spikes on small data" in page and "my lab notebook, page 12" in page


# -- a swept study: the lr grid for "more stable than", the grad_clip=0 variants, the study's own recipe

def swept_study(sweep, **recipe):
    from harness.variants import variants

    return {**PROXY, "recipe": {**PROXY["recipe"], "lr": 0.01, **recipe}, "sweep": sweep, "variants": variants(sweep)}


def swept_runs(study, finals):
    """runs, events and trajectories of a swept study: finals[arch][lr] = the seeds' final losses (inf: the
    run diverged), every run starting at 5.5 nats."""
    from harness.contracts import SWEEP_PREFIX

    runs, curves = [], []
    for arch, by_lr in finals.items():
        for lr, losses in by_lr.items():
            variant = f"lr={lr:g}"
            for seed, final in enumerate(losses):
                broken = final == float("inf")
                runs.append({"study": "s", "arch": arch, "variant": variant, "seed": seed, f"{SWEEP_PREFIX}lr": lr,
                             "status": "diverged" if broken else "completed", "steps_done": 900 if broken else 2_000})
                for step, value in ((0, 5.5), (1_000, 4.0), (900 if broken else 2_000, float("nan") if broken else final)):
                    curves.append({"study": "s", "arch": arch, "variant": variant, "seed": seed, "step": step,
                                   "split": "val", "metric": "loss", "value": value})
    events = pd.DataFrame(columns=["study", "arch", "variant", "seed", "type", "onset_step"])
    return pd.DataFrame(runs), events, pd.DataFrame(curves)


def test_more_stable_than_reads_the_lr_sweep_sensitivity_and_unstable_rates():
    from harness import stability

    study = swept_study({"lr": [0.01, 0.1, 1.0]})
    flat, steep = [2.0, 2.02, 2.04, 2.06], [float("inf")] * 4
    runs, events, curves = swept_runs(study, {"memnls": {0.01: flat, 0.1: flat, 1.0: flat},
                                              "transformer": {0.01: flat, 0.1: [3.0, 3.1, 3.2, 3.3], 1.0: steep}})
    tables = stability.tables(study, runs, curves, events)
    v = claims.evaluate(study, runs, events, None, tables).set_index("id").loc["memnls-anti-collapse"]
    # sensitivity of seed s: memnls 0; transformer (f_s + 3.0 + 0.1 s + 5.5) / 3 - f_s = 1.5 + 0.02 s with
    # f_s = 2 + 0.02 s (the diverged run counts as its initial 5.5): a mean difference of -1.53 nats;
    # 4 vs 4 seeds separate completely, exact p = 0.029
    assert v["proxy_verdict"] == "supported", v["sentence"]
    assert v["estimate"] == pytest.approx(-1.53, abs=1e-9)
    assert "Learning-rate sensitivity" in v["sentence"] and "0 of 12" in v["sentence"] and "4 of 12" in v["sentence"]
    assert "the lr grid 0.01, 0.1, 1" in v["scale"]
    swapped = runs.assign(arch=runs["arch"].map({"memnls": "transformer", "transformer": "memnls"}))
    curves_swapped = curves.assign(arch=curves["arch"].map({"memnls": "transformer", "transformer": "memnls"}))
    tables = stability.tables(study, swapped, curves_swapped, events)
    v = claims.evaluate(study, swapped, events, None, tables).set_index("id").loc["memnls-anti-collapse"]
    assert v["proxy_verdict"] == "contradicted", v["sentence"]


def test_no_clip_needed_reads_the_unclipped_variant_at_the_studys_own_recipe():
    from harness.contracts import SWEEP_PREFIX

    study = swept_study({"lr": [0.01, 1.0], "grad_clip": [1.0, 0]}, grad_clip=1.0)  # its own lr: 0.01
    rows = [{"arch": a, "variant": f"lr={lr:g},clip={clip:g}", "seed": s, f"{SWEEP_PREFIX}lr": lr,
             f"{SWEEP_PREFIX}grad_clip": clip, "steps_done": 2_000,
             # every run at lr=1 breaks, clipped or not; at its own lr only the unclipped transformer does
             "status": "diverged" if lr == 1.0 or (a, clip) == ("transformer", 0) else "completed"}
            for a in ("resonance", "transformer") for lr in (0.01, 1.0) for clip in (1.0, 0) for s in range(4)]
    v = claims.evaluate(study, pd.DataFrame(rows), NO_EVENTS).set_index("id").loc["resonance-no-clip-needed"]
    # lr=0.01 without clipping: resonance 0 of 4, transformer 4 of 4 (one-sided Fisher p = 0.014)
    assert (v["proxy_verdict"], v["k"], v["n"]) == ("supported", 0, 4), v["sentence"]
    assert "Without gradient clipping (variant lr=0.01,clip=0)" in v["sentence"]
    no_unclipped = swept_study({"lr": [0.01, 1.0]}, grad_clip=1.0)
    v = claims.evaluate(no_unclipped, pd.DataFrame(rows), NO_EVENTS).set_index("id").loc["resonance-no-clip-needed"]
    assert "needs a grad_clip=0 variant of resonance and transformer at the study's own recipe (lr=0.01,clip=0)" \
        in v["sentence"]


def test_a_claim_about_one_architecture_is_tested_at_the_studys_own_recipe():
    from harness.contracts import SWEEP_PREFIX

    study = swept_study({"lr": [0.01, 1.0]})
    runs = pd.DataFrame([{"arch": "resonance", "variant": f"lr={lr:g}", "seed": s, f"{SWEEP_PREFIX}lr": lr,
                          "status": "completed", "steps_done": 2_000} for lr in (0.01, 1.0) for s in range(4)])
    spikes = pd.DataFrame({"arch": "resonance", "variant": "lr=1", "seed": [0, 1, 2, 3], "type": "spike",
                           "onset_step": 500})
    v = claims.evaluate(study, runs, spikes).set_index("id").loc["resonance-no-spikes"]
    assert (v["proxy_verdict"], v["k"], v["n"]) == ("consistent", 0, 4)  # lr=1's spikes are not its recipe's
    assert "variant lr=0.01" in v["scale"]
    elsewhere = swept_study({"lr": [0.1, 1.0]})
    v = claims.evaluate(elsewhere, runs.assign(variant=runs["variant"].replace({"lr=0.01": "lr=0.1"})),
                        spikes).set_index("id").loc["resonance-no-spikes"]
    assert v["proxy_verdict"] == "cannot test"
    assert "needs the variant at the study's own recipe (lr=0.01) in its sweep" in v["sentence"]
