"""Atomic file writes: a temporary file in the target's folder, renamed into place, so a reader
(or an interrupted run) sees either the complete old file or the complete new one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, raw: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def progress(iterable, desc: str, enabled: bool = True, **kwargs):
    """A terminal progress bar over ``iterable``, off when ``enabled`` is false or the
    environment sets ``TQDM_DISABLE`` (the chapter runner does, for the kernels it starts:
    progress bars belong in a terminal, never in a published page)."""
    if not enabled or os.environ.get("TQDM_DISABLE"):
        return iterable  # without importing tqdm.auto, whose notebook probe warns into the page
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, **kwargs)
