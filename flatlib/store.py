"""A content-addressed store on disk: values (bytes, JSON, torch objects) under string keys.

A key is a relative path such as ``"networks/3f2a....pt"``; whoever stores something derives
the key from what determines it (``flatlib.keys``). Every write goes to a temporary file in the
same folder and is renamed into place (``flatlib._io.atomic_write``), so an interrupted run leaves
either a complete entry or none.

Every entry carries, in a header before its bytes, the key it was written under and the SHA-256
of its bytes. A read checks both: an entry whose bytes were altered (a flipped byte that
``torch.load`` would still accept, a value edited in place), one that was moved or copied under
another key (two files swapped, a network saved under another seed's key), or one that cannot be
decoded is a miss, never a value: it is recomputed and overwritten, and the process says once how
many it met (``report_discarded``).

The store lives in ``$FLATLIB_CACHE``, else ``$XDG_CACHE_HOME/flatlib/results``, else
``~/.cache/flatlib/results``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import torch

from flatlib._io import atomic_write


def cache_dir() -> Path:
    root = os.environ.get("FLATLIB_CACHE")
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flatlib" / "results"


class StoreError(OSError):
    """A store this process cannot use."""


def check_writable() -> Path:
    """The store's folder, created if missing; a folder this process cannot write to is one
    clear error, raised before a sweep starts any work rather than after its first network."""
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".writable-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise StoreError(f"the store {root} is not writable ({error.strerror or error}); set FLATLIB_CACHE to a "
                         "folder this process can write to") from error
    return root


def digest(payload) -> str:
    """20 hex digits of the SHA-256 of ``payload`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def path(key: str) -> Path:
    """The file of entry ``key``."""
    parts = PurePosixPath(key).parts
    if not parts or PurePosixPath(key).is_absolute() or ".." in parts:
        raise ValueError(f"a store key is a relative path inside the store, got {key!r}")
    return cache_dir().joinpath(*parts)


MAGIC = b"flatlib-store-entry 1\n"
_DISCARDED: dict[str, int] = {}  # why -> how many entries this process refused since the last report


def _sealed(key: str, raw: bytes) -> bytes:
    header = json.dumps({"key": key, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}, sort_keys=True)
    return MAGIC + header.encode() + b"\n" + raw


def _opened(key: str, sealed: bytes) -> bytes | None:
    """The bytes of an entry read under ``key``, or None (counted) if its header is missing, names
    another key, or does not match its bytes."""
    why = None
    if not sealed.startswith(MAGIC):
        why = "no header (written by another version of the store, or not by flatlib)"
    else:
        head, _, raw = sealed[len(MAGIC):].partition(b"\n")
        try:
            header = json.loads(head)
        except ValueError:
            header = None
        if not isinstance(header, dict):
            why = "an unreadable header"
        elif header.get("key") != key:
            why = "written under another key"
        elif header.get("size") != len(raw) or header.get("sha256") != hashlib.sha256(raw).hexdigest():
            why = "bytes that do not match their checksum"
        else:
            return raw
    _DISCARDED[why] = _DISCARDED.get(why, 0) + 1
    return None


def report_discarded(stream=None) -> int:
    """Say once (on ``stream``, default stderr) how many entries were refused since the last
    report, and why; return the count."""
    count = sum(_DISCARDED.values())
    if count:
        reasons = "; ".join(f"{n} with {why}" for why, n in sorted(_DISCARDED.items()))
        print(f"store {cache_dir()}: {count} entr{'y' if count == 1 else 'ies'} refused and recomputed "
              f"({reasons})", file=stream or sys.stderr)
        _DISCARDED.clear()
    return count


def _get(key: str, decode: Callable[[bytes], Any]):
    try:
        sealed = path(key).read_bytes()
    except FileNotFoundError:
        return None
    raw = _opened(key, sealed)
    if raw is None:
        return None
    try:
        return decode(raw)
    except Exception:
        _DISCARDED["bytes that cannot be decoded"] = _DISCARDED.get("bytes that cannot be decoded", 0) + 1
        return None


def verified(key: str) -> bool:
    """Whether the store holds an intact entry under ``key`` (its header and checksum hold)."""
    try:
        sealed = path(key).read_bytes()
    except FileNotFoundError:
        return False
    saved = dict(_DISCARDED)
    intact = _opened(key, sealed) is not None
    _DISCARDED.clear()
    _DISCARDED.update(saved)  # a count, not a read: nothing was refused
    return intact


def put_bytes(key: str, raw: bytes) -> Path:
    atomic_write(path(key), _sealed(key, raw))
    return path(key)


def get_bytes(key: str) -> bytes | None:
    return _get(key, bytes)


def put_json(key: str, value) -> Path:
    return put_bytes(key, json.dumps(value).encode())


def get_json(key: str):
    """The JSON value stored under ``key``, or None if there is none (or it was corrupt)."""
    return _get(key, json.loads)


def put_torch(key: str, value) -> Path:
    buf = io.BytesIO()
    torch.save(value, buf)
    return put_bytes(key, buf.getvalue())


def get_torch(key: str):
    """The tensors (and plain containers of them) stored under ``key``, loaded onto the CPU
    with ``weights_only=True``, or None if there is none (or it was corrupt)."""
    return _get(key, lambda raw: torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True))
