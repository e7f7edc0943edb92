"""A content-addressed store on disk: values (bytes, JSON, torch objects) under string keys.

A key is a relative path such as ``"networks/3f2a....pt"``; whoever stores something derives
the key from a hash of everything that determines it (``digest``). Every write goes to a
temporary file in the same folder and is renamed into place (``flatlib._io.atomic_write``),
so an interrupted run leaves either a complete entry or none. An entry that cannot be decoded
is deleted and reported as missing, so it is recomputed, never served.

The store lives in ``$FLATLIB_CACHE``, else ``$XDG_CACHE_HOME/flatlib/results``, else
``~/.cache/flatlib/results``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
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


def _get(key: str, decode: Callable[[bytes], Any]):
    file = path(key)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return decode(raw)
    except Exception:
        file.unlink(missing_ok=True)
        return None


def put_bytes(key: str, raw: bytes) -> Path:
    atomic_write(path(key), raw)
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
