"""files: an interrupted write or a full disk leaves the old file intact and no temporary behind."""

import errno
import os
from pathlib import Path

import pytest

from harness.files import DiskFull, atomic, write_atomic


def test_write_lands_whole_with_ordinary_permissions(tmp_path):
    target = tmp_path / "deep" / "run.json"
    write_atomic(target, '{"status": "completed"}\n')
    assert target.read_text() == '{"status": "completed"}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(target.parent) == ["run.json"]


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.csv"
    write_atomic(target, b"step,value\n1,2.0\n")

    def half_then_crash(tmp: str) -> None:
        Path(tmp).write_text("step,val")
        raise KeyboardInterrupt  # a kill in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic(target, half_then_crash)
    assert target.read_bytes() == b"step,value\n1,2.0\n"
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_a_full_disk_keeps_the_old_file_leaves_no_temporary_and_says_where(small_fs):
    target = small_fs / "metrics.csv"
    write_atomic(target, b"step,value\n1,2.0\n")
    with pytest.raises(DiskFull) as error:
        write_atomic(target, b"x" * 2**21)  # 2 MiB onto a 1 MiB filesystem
    assert error.value.errno == errno.ENOSPC
    assert error.value.strerror.startswith(f"no space left on the device to write {target} (")
    assert "MiB free of 1.0 MiB on its filesystem" in error.value.strerror
    assert target.read_bytes() == b"step,value\n1,2.0\n"
    assert os.listdir(small_fs) == ["metrics.csv"]
