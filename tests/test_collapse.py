"""Collapse detection: the published enwik8 curves, synthetic runs with known events, file input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.collapse import DetectConfig, detect, detect_file
from harness.contracts import EVENT_COLUMNS, EVENT_TYPES
from harness.synthetic import make_run, match
from tests.conftest import PUBLISHED, SHARED_REFERENCE


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    """The published 70M curves as the package ships them (harness/published/)."""
    return detect_file(PUBLISHED)


@pytest.mark.skipif(SHARED_REFERENCE is None or not SHARED_REFERENCE.is_file(),
                    reason="no ../shared/reference beside the repository to compare the packaged curves with")
def test_packaged_curves_equal_the_shared_reference():
    assert PUBLISHED.read_bytes() == SHARED_REFERENCE.read_bytes()


def test_published_transformer_collapse_is_dated_like_the_card(published):
    events = published[published["arch"] == "transformer"]
    collapse = events[events["type"] == "collapse"]
    assert len(collapse) == 1
    e = collapse.iloc[0]
    assert e["split"] == "val"
    assert 27_500 <= e["onset_step"] <= 28_500
    assert e["peak_step"] == 33_500
    assert e["peak_value"] == pytest.approx(27.17, abs=0.01)
    assert e["magnitude"] == pytest.approx(27.17 / 3.10, rel=0.01)  # statistics.md: 8.8x
    assert not e["recovered"] and math.isnan(e["end_step"])
    assert 26_500 <= e["train_onset_step"] < e["onset_step"]  # the train curve moves first
    assert e["score"] > e["threshold"]
    assert "partial recovery" in e["note"] and "second rise from 42,000" in e["note"]


def test_published_memnls_has_no_event(published):
    assert published["arch"].iloc[0] in ("memnls", "transformer")  # identity column leads
    assert list(published.columns) == ["arch"] + EVENT_COLUMNS
    assert published[published["arch"] == "memnls"].empty


def test_healthy_synthetic_runs_have_no_events():
    rng = np.random.default_rng(7)
    for n_evals, noise in [(20, 0.03), (60, 0.017), (120, 0.03), (200, 0.01), (200, 0.035)]:
        for _ in range(4):
            frame, truth = make_run("healthy", rng, n_evals=n_evals, val_noise=noise)
            events = detect(frame, vocab_size=256)
            assert events.empty, (n_evals, noise, events.to_dict("records"))


@pytest.mark.parametrize("kind, extra, recovered, max_error", [
    ("spike", {}, True, 0),
    ("collapse", {}, False, 1),
    ("collapse", {"recovers": True}, True, 1),
    ("overfit_divergence", {}, False, 6),  # a gradual rise has no sharp onset
    ("divergence", {}, False, 0),
    ("divergence", {"nan": False}, False, 1),
])
def test_injected_event_found_with_its_type_and_onset(kind, extra, recovered, max_error):
    rng = np.random.default_rng(11)
    for _ in range(5):
        frame, truth = make_run(kind, rng, n_evals=80, magnitude=3.0, val_noise=0.02, **extra)
        events = detect(frame, vocab_size=256)
        found, error = match(events, truth)
        assert found, (truth, events.drop(columns="note").to_dict("records"))
        assert error <= max_error, (truth, error)
        event = events[events["type"] == kind].iloc[0]
        assert bool(event["recovered"]) == recovered
        assert (events["type"] == "collapse").sum() <= 1 and events["type"].isin(EVENT_TYPES).all()


def _run(val: list[float], train: list[float] | None = None, eval_every: int = 100) -> pd.DataFrame:
    """A hand-written run: validation every eval_every steps, train (if given) at the same steps."""
    steps = np.arange(1, len(val) + 1) * eval_every
    rows = [pd.DataFrame({"step": steps, "split": "val", "metric": "loss", "value": val})]
    if train is not None:
        rows.append(pd.DataFrame({"step": steps, "split": "train", "metric": "loss", "value": train}))
    return pd.concat(rows, ignore_index=True)


def _flat(n: int, level: float, seed: int = 0, noise: float = 0.01) -> list[float]:
    return list(level + noise * np.random.default_rng(seed).standard_normal(n))


def test_step_jump_onset_is_the_last_evaluation_at_the_level():
    val = _flat(30, 2.0) + _flat(10, 2.0 + math.log(2.0), seed=1)
    events = detect(_run(val))
    assert events["type"].tolist() == ["collapse"]
    e = events.iloc[0]
    assert e["onset_step"] == 3000 and e["split"] == "val"  # eval 30 is the last at 2.0
    assert e["magnitude"] == pytest.approx(2.0, rel=0.05)
    assert math.isnan(e["train_onset_step"])  # no train curve given


def test_a_ramp_before_the_jump_belongs_to_the_event():
    val = _flat(30, 2.0, seed=5, noise=0.08) + [2.25, 2.25] + _flat(10, 2.0 + math.log(3.0), seed=1)
    e = detect(_run(val)).iloc[0]  # evals 31-32 sit 1.28x high, too noisy for the z test alone
    assert e["type"] == "collapse" and e["onset_step"] == 3000


def test_a_jump_that_holds_is_tested_on_its_median():
    val = _flat(30, 2.0, seed=5, noise=0.07) + [2.0 + math.log(1.55)] * 8
    e = detect(_run(val)).iloc[0]  # the first high point alone has a robust z of 5.4 < 6
    assert e["type"] == "collapse" and e["onset_step"] == 3000 and e["score"] > e["threshold"]


def test_collapse_needs_the_train_jump_else_it_is_overfitting():
    val = _flat(30, 2.0) + _flat(10, 2.0 + math.log(2.0), seed=1)
    jumped = _flat(28, 1.9, seed=2) + _flat(12, 1.9 + math.log(2.0), seed=3)  # train moves first
    falling = list(np.linspace(1.9, 1.7, 40))
    collapse = detect(_run(val, jumped)).iloc[0]
    assert collapse["type"] == "collapse" and collapse["train_onset_step"] == 2800
    assert detect(_run(val, falling)).iloc[0]["type"] == "overfit_divergence"


def test_spike_comes_back_within_the_tolerance():
    val = _flat(30, 2.0)
    val[20] += math.log(1.8)
    events = detect(_run(val))
    assert events["type"].tolist() == ["spike"]
    e = events.iloc[0]
    assert (e["onset_step"], e["peak_step"], e["end_step"]) == (2000, 2100, 2200)
    assert e["recovered"] and e["magnitude"] == pytest.approx(1.8, rel=0.05)


def test_nan_is_a_divergence_dated_before_it():
    val = _flat(20, 2.0) + [math.nan]
    e = detect(_run(val, _flat(20, 1.9) + [math.inf])).iloc[0]
    assert e["type"] == "divergence" and e["onset_step"] == 2000 and e["peak_step"] == 2100
    assert e["peak_value"] == math.inf and e["magnitude"] == math.inf and not e["recovered"]
    assert "non-finite" in e["note"]


def test_training_that_diverges_during_a_collapse_adds_a_divergence():
    """The val curve collapses at 3,000; the train loss follows, then goes NaN before the next eval."""
    val = _flat(30, 2.0) + _flat(10, 2.0 + math.log(2.0), seed=1)
    train = _flat(29, 1.9, seed=2) + _flat(10, 1.9 + math.log(2.0), seed=3) + [math.nan]
    events = detect(_run(val, train)).set_index("type")
    assert sorted(events.index) == ["collapse", "divergence"]
    assert events.loc["collapse", "onset_step"] == 3000 and events.loc["collapse", "split"] == "val"
    # the train excursion that began at 2,900 ended non-finite: it is the divergence, dated from its start
    divergence = events.loc["divergence"]
    assert (divergence["split"], divergence["onset_step"], divergence["peak_value"]) == ("train", 2900, math.inf)
    assert "non-finite train loss (nan) at 4,000" in divergence["note"]


def test_back_at_the_untrained_level_is_a_divergence_only_with_the_vocabulary():
    ln_vocab = math.log(256)
    val = list(np.linspace(ln_vocab + 0.5, 2.0, 10)) + _flat(20, 2.0) + _flat(10, ln_vocab + 0.2, seed=1)
    assert detect(_run(val), vocab_size=256)["type"].tolist() == ["divergence"]
    assert detect(_run(val))["type"].tolist() == ["collapse"]


def test_slow_rise_is_found_and_dated_at_the_bottom_of_the_u():
    steps = np.arange(60)
    u_shape = 2.0 + 0.0004 * (steps - 40) ** 2 + np.where(steps > 40, 0.02 * (steps - 40), 0.0)  # bottom: 40
    val = u_shape + 0.01 * np.random.default_rng(0).standard_normal(60)
    e = detect(_run(list(val), list(np.linspace(1.9, 1.6, 60)))).iloc[0]  # ...while train keeps falling
    assert e["type"] == "overfit_divergence"
    assert abs(e["onset_step"] - 4100) <= 300
    assert e["score"] > e["threshold"]


def test_too_few_evaluations_give_no_events():
    frame, _ = make_run("healthy", 0, n_evals=12, eval_every=25, logs_per_eval=1)  # a 300-step smoke run
    assert detect(frame, vocab_size=256).empty
    assert detect(_run([3.0, 2.5, 9.0])).empty  # a jump, but nothing to compare it with
    empty = detect(pd.DataFrame(columns=["step", "split", "metric", "value"]))
    assert empty.empty and list(empty.columns) == EVENT_COLUMNS


def test_metric_column_is_optional_and_other_metrics_are_ignored():
    val = _flat(30, 2.0) + _flat(10, 2.0 + math.log(2.0), seed=1)
    frame = _run(val)
    lr = frame.assign(metric="lr", value=1e-3)
    with_lr = detect(pd.concat([frame, lr], ignore_index=True))
    without_metric = detect(frame.drop(columns="metric").assign(wall_time=1.0))
    pd.testing.assert_frame_equal(with_lr, without_metric)


def test_config_rejects_unknown_and_bad_values():
    assert DetectConfig.from_dict({}) == DetectConfig()
    assert DetectConfig.from_dict({"z_threshold": 8}).z_threshold == 8
    with pytest.raises(ValueError, match="z_treshold"):
        DetectConfig.from_dict({"z_treshold": 8})
    with pytest.raises(ValueError, match="min_ratio"):
        DetectConfig(min_ratio=1.05)  # must exceed 1 + recovery_tolerance
    with pytest.raises(ValueError, match="level_window"):
        DetectConfig(level_window=0)
    with pytest.raises(ValueError, match="missing column"):
        detect(pd.DataFrame({"step": [1], "value": [1.0]}))


def test_a_stricter_config_finds_less():
    val = _flat(30, 2.0)
    val[20] += math.log(1.3)
    assert len(detect(_run(val))) == 1
    assert detect(_run(val), DetectConfig(min_ratio=1.4)).empty


def _two_runs() -> tuple[pd.DataFrame, pd.DataFrame]:
    healthy, _ = make_run("healthy", 1, n_evals=40, logs_per_eval=2)
    collapsed, _ = make_run("collapse", 2, n_evals=40, logs_per_eval=2, magnitude=3.0, onset=20)
    return healthy, collapsed


def test_detect_file_groups_a_long_csv_by_its_identity_columns(tmp_path):
    healthy, collapsed = _two_runs()
    long = pd.concat([healthy.assign(arch="a", seed=0), collapsed.assign(arch="b", seed=1)], ignore_index=True)
    path = tmp_path / "log.csv"
    long.assign(wall_time=0.5).to_csv(path, index=False)
    events = detect_file(path)
    assert list(events.columns) == ["arch", "seed"] + EVENT_COLUMNS
    assert events[["arch", "seed"]].drop_duplicates().values.tolist() == [["b", 1]]
    assert events.loc[events["type"] == "collapse", "onset_step"].tolist() == [10_500]
    pd.testing.assert_frame_equal(events.drop(columns=["arch", "seed"]), detect(collapsed))


def test_detect_file_reads_a_wide_csv_with_blank_cells(tmp_path):
    _, collapsed = _two_runs()
    wide = collapsed.pivot(index="step", columns="split", values="value").reset_index()
    wide = wide.rename(columns={"train": "train_loss", "val": "val_loss"}).assign(lr=3e-4)
    path = tmp_path / "wide.csv"
    wide.to_csv(path, index=False)  # val_loss is blank where only train was logged
    pd.testing.assert_frame_equal(detect_file(path), detect(collapsed))


def test_detect_file_names_the_file_in_its_errors(tmp_path):
    no_step = tmp_path / "no_step.csv"
    no_step.write_text("iteration,loss\n1,2.0\n")
    with pytest.raises(ValueError, match="no_step.csv.*'step'"):
        detect_file(no_step)
    no_loss = tmp_path / "no_loss.csv"
    no_loss.write_text("step,lr\n1,0.1\n")
    with pytest.raises(ValueError, match="no_loss.csv.*no loss column"):
        detect_file(no_loss)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        detect_file(tmp_path / "absent.csv")


# --- issue #11: shapes the synthetic generator does not draw -------------------------------------


def _overfit_run(vocab: int) -> pd.DataFrame:
    """The real case at vocab 65: train falls to 0.2 while validation climbs from 1.5 past ln V over
    45k steps; at vocab 256 the same shape climbs past ln 256 = 5.55."""
    ln_vocab = math.log(vocab)
    steps = np.arange(1, 181) * 250  # 45k steps, evaluated every 250
    rng = np.random.default_rng(vocab)
    fall = 4.0 * np.exp(-steps / 4000)
    val = 1.5 + fall + np.clip(steps - 8000, 0, None) / 37000 * (ln_vocab + 1.0 - 1.5)
    val = val * np.exp(0.01 * rng.standard_normal(len(steps)))
    train = (0.2 + 4.0 * np.exp(-steps / 4000) + 0.3 * np.exp(-steps / 20000)) * np.exp(
        0.01 * rng.standard_normal(len(steps)))
    return pd.concat([pd.DataFrame({"step": steps, "split": "val", "metric": "loss", "value": val}),
                      pd.DataFrame({"step": steps, "split": "train", "metric": "loss", "value": train})],
                     ignore_index=True)


@pytest.mark.parametrize("vocab", [65, 256])
def test_validation_past_ln_vocab_with_falling_train_loss_is_overfitting(vocab):
    events = detect(_overfit_run(vocab), vocab_size=vocab)
    assert events["type"].tolist() == ["overfit_divergence"], events.drop(columns="note").to_dict("records")
    assert "ln(vocab)" in events.iloc[0]["note"] and "train loss kept falling" in events.iloc[0]["note"]


@pytest.mark.parametrize("vocab", [65, 256])
def test_train_loss_back_at_ln_vocab_is_a_divergence(vocab):
    frame = _overfit_run(vocab)
    ln_vocab = math.log(vocab)
    late = frame["step"] > 30_000
    frame.loc[late, "value"] = ln_vocab + 0.3  # both curves back above the untrained level
    events = detect(frame, vocab_size=vocab)
    assert "divergence" in events["type"].tolist()
    e = events[events["type"] == "divergence"].iloc[0]
    assert e["score"] >= e["threshold"]  # the statistic that decided it: the smoothed loss vs ln V


def test_an_isolated_nan_is_its_own_event_and_the_scan_goes_on():
    val = _flat(60, 2.0)
    train = _flat(60, 1.9, seed=2)
    train[20] = math.nan  # one bad log in the middle of a healthy run
    val[45:] = list(np.array(val[45:]) + math.log(2.0))  # a real collapse after it
    train[44:] = list(np.array(train[44:]) + math.log(2.0))
    events = detect(_run(val, train))
    assert "nonfinite" in EVENT_TYPES
    assert sorted(events["type"]) == ["collapse", "nonfinite"], events.drop(columns="note").to_dict("records")
    nan_event = events[events["type"] == "nonfinite"].iloc[0]
    assert nan_event["split"] == "train" and nan_event["peak_step"] == 2100 and nan_event["recovered"]
    assert events[events["type"] == "collapse"].iloc[0]["onset_step"] == 4500


def test_a_run_that_ends_non_finite_is_still_a_divergence():
    val = _flat(30, 2.0) + [math.nan, 2.0] + _flat(10, 2.0, seed=3) + [math.nan, math.nan]
    events = detect(_run(val))
    assert events["type"].tolist() == ["nonfinite", "divergence"]
    assert events.iloc[1]["peak_step"] == 4300


def test_an_early_divergence_does_not_erase_a_later_collapse():
    """Logged every step: the first steps sit at ln V with noise, then training falls, then collapses."""
    ln_vocab = math.log(256)
    rng = np.random.default_rng(4)  # noise at ln V in steps 1-3 once made a divergence that erased the rest
    steps = np.arange(1, 3001)
    val_steps = steps[steps % 50 == 0]

    def law(t):
        return 1.5 + (ln_vocab - 1.5) * np.exp(-np.maximum(t - 8, 0) / 150)

    excess = np.where(np.arange(1, 3001) > 2000, math.log(3.0), 0.0)
    train = (law(steps) + excess) * np.exp(0.03 * rng.standard_normal(len(steps)))
    val = (law(val_steps) + excess[val_steps - 1]) * np.exp(0.01 * rng.standard_normal(len(val_steps)))
    frame = pd.concat([pd.DataFrame({"step": steps, "split": "train", "metric": "loss", "value": train}),
                       pd.DataFrame({"step": val_steps, "split": "val", "metric": "loss", "value": val})],
                      ignore_index=True)
    events = detect(frame, vocab_size=256)
    assert "divergence" not in events["type"].tolist(), events.drop(columns="note").to_dict("records")
    collapse = events[events["type"] == "collapse"]
    assert len(collapse) == 1 and collapse.iloc[0]["onset_step"] == 2000


def test_perplexity_instead_of_loss_is_refused():
    ppl = np.exp(np.array(_flat(40, 2.0)))  # ~7.4 cannot be a loss of a 4-token vocabulary (ln 4 = 1.39)
    frame = _run(list(np.exp(np.linspace(7.5, 2.5, 40))))
    with pytest.raises(ValueError, match="perplexity"):
        detect(frame, vocab_size=256)
    with pytest.raises(ValueError, match="perplexity"):
        detect(_run(list(ppl)), vocab_size=4)
    assert detect(_run(list(np.linspace(5.6, 2.0, 40))), vocab_size=256).empty  # starts near ln V: a loss


@pytest.mark.parametrize("layout", ["wide", "long"])
def test_detect_file_reads_every_spelling_of_non_finite(tmp_path, layout):
    spellings = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", ""]
    values = [f"{v:.4f}" for v in _flat(40, 2.0)]
    for i, s in enumerate(spellings):
        values[10 + 3 * i] = s
    if layout == "wide":
        text = "step,loss\n" + "".join(f"{100 * (i + 1)},{v}\n" for i, v in enumerate(values))
    else:
        text = "step,split,metric,value\n" + "".join(f"{100 * (i + 1)},val,loss,{v}\n" for i, v in enumerate(values))
    path = tmp_path / "log.csv"
    path.write_text(text)
    events = detect_file(path)
    assert (events["type"] == "nonfinite").sum() == len(spellings)
    from harness.cli import main
    assert main(["detect", str(path)]) == 0


def test_a_level_divergence_reports_the_statistic_that_decided_it():
    ln_vocab = math.log(256)
    val = list(np.linspace(ln_vocab + 0.5, 2.0, 10)) + _flat(20, 2.0) + _flat(10, ln_vocab + 0.2, seed=1)
    e = detect(_run(val), vocab_size=256).iloc[0]
    assert e["type"] == "divergence"
    assert e["threshold"] == pytest.approx(ln_vocab)  # not the z test's threshold
    assert e["score"] == pytest.approx(ln_vocab + 0.2, abs=0.05)  # the smoothed loss that reached it


def _exponential_run(n_steps: int, train_noise: float, val_every: int, val_noise: float, dof: float | None,
                     seed: int) -> pd.DataFrame:
    """Not the generator's power law: an exponential decay to a floor, train logged every step."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n_steps + 1)
    law = 1.2 + 3.5 * np.exp(-steps / (n_steps / 8))
    train = law * np.exp(train_noise * rng.standard_normal(n_steps))
    val_steps = steps[steps % val_every == 0]
    noise = rng.standard_t(dof, len(val_steps)) / math.sqrt(dof / (dof - 2)) if dof else rng.standard_normal(len(val_steps))
    val = (law[val_steps - 1] + 0.05) * np.exp(val_noise * noise)
    return pd.concat([pd.DataFrame({"step": steps, "split": "train", "metric": "loss", "value": train}),
                      pd.DataFrame({"step": val_steps, "split": "val", "metric": "loss", "value": val})],
                     ignore_index=True)


def test_a_healthy_run_logged_every_step_is_not_flagged():
    """20,000 train points with 5% noise once gave ~20 false train spikes; t3 validation noise 10%."""
    for seed in range(3):
        events = detect(_exponential_run(20_000, 0.05, 200, 0.02, 3.0, seed), vocab_size=256)
        assert events.empty, events.drop(columns="note").to_dict("records")


def test_a_collapse_in_a_run_logged_every_step_is_found():
    frame = _exponential_run(20_000, 0.05, 200, 0.02, 3.0, 7)
    jump = frame["step"] > 14_000
    frame.loc[jump, "value"] = frame.loc[jump, "value"] + math.log(1.5)
    events = detect(frame, vocab_size=256)
    collapse = events[events["type"] == "collapse"]
    assert len(collapse) == 1 and abs(collapse.iloc[0]["onset_step"] - 14_000) <= 400, events.drop(columns="note")
