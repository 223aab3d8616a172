"""Atomic file writes: a temporary file in the destination folder, then a rename,
so that a reader never sees half a file and an error leaves nothing behind."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    """Write `data` to `path` atomically. With overwrite=False an existing file is an error
    (FileExistsError), checked again just before the rename."""
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists (use --force to overwrite)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if not overwrite:
            # link() fails if the target appeared meanwhile; rename() would replace it.
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
