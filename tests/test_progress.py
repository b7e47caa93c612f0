"""Progress lines of long jobs: at most one every ~10 s, with step of total, loss, tokens/s and time left."""

from __future__ import annotations

import io
import re

from harness.progress import Progress, duration, last_progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_at_most_every_ten_seconds_and_at_the_last_step():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(total=100, tokens_per_step=512, every=10.0, clock=clock, stream=out)
    written = []
    for step in range(1, 101):
        clock.now += 0.3  # 0.3 s per step: a line once 10 s have passed (34 steps), and one at step 100
        if progress.update(step, 2.5) is not None:
            written.append(step)
    assert written == [34, 68, 100]
    assert out.getvalue().count("\n") == 3


def test_the_line_says_step_of_total_loss_tokens_per_second_and_time_left():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(total=300, tokens_per_step=2048, start_step=100, every=10.0, clock=clock, stream=out)
    clock.now += 12.5
    line = progress.update(150, 2.91234)  # 50 steps of this process in 12.5 s: 4 steps/s
    assert line == out.getvalue().strip()
    assert line == "progress: step 150/300 (50%) loss 2.9123 | 8,192 tok/s | 12 s elapsed, ~38 s left"
    assert last_progress("resumed from ...\n" + line + "\nTraceback") == {"step": 150, "total": 300, "elapsed": 12.0}
    assert last_progress("no progress here") is None


def test_durations_read_as_a_person_reads_them():
    assert [duration(s) for s in (4.4, 250, 7500, 3 * 86400 + 4 * 3600)] == ["4 s", "4 min 10 s", "2 h 05 min", "3 d 4 h"]


def test_a_training_run_writes_progress_to_its_log(tmp_path, shared_data, capfd):
    from harness.run import execute
    from tests.test_train import spec_for

    assert execute(spec_for("transformer"), tmp_path / "run") == "completed"
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("progress:")]
    assert lines, "no progress line"
    assert re.fullmatch(r"progress: step 40/40 \(100%\) loss \d+\.\d{4} \| [\d,]+ tok/s \| \d+ s elapsed, ~0 s left",
                        lines[-1]), lines[-1]
