"""Atomic file writes: a kill or a crash never leaves half a file looking complete. No torch here.

A write that meets a full filesystem raises ``DiskFull``, naming the file and the space left; the
file it would have replaced is untouched and no temporary file is left behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


class DiskFull(OSError):
    """No space (or quota) left where an output was being written."""


def disk_full(path: Path, error: BaseException) -> DiskFull | None:
    """``error`` as a DiskFull naming ``path`` and the space left, or None when it is another error."""
    # a library writing in Rust (safetensors) reports the OS error only in its message: "(os error 28)"
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or f"(os error {errno.ENOSPC})" in str(error)
    if not full or isinstance(error, DiskFull):
        return None
    try:
        usage = shutil.disk_usage(path.parent)
        space = f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"
    except OSError:
        space = "free space unknown"
    return DiskFull(errno.ENOSPC, f"no space left on the device to write {path} ({space} on its filesystem; "
                                  f"{error}): free some space, then run again")


def atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = None
    umask = os.umask(0)
    os.umask(umask)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a result should be as readable as any file
        os.replace(tmp, path)
    except Exception as e:
        if full := disk_full(path, e):
            raise full from e
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to ``path`` atomically."""
    payload = data.encode() if isinstance(data, str) else data
    atomic(path, lambda tmp: Path(tmp).write_bytes(payload))
