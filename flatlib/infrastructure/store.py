"""A content-addressed store: values (bytes, JSON, torch objects) under string keys, in a folder
or in an object store (``s3://bucket/prefix``).

A key is a relative path such as ``"networks/3f2a....pt"``; whoever stores something derives
the key from what determines it (``flatlib.keys``). An interrupted run leaves either a complete
entry or none: in a folder every write goes to a temporary file in the same folder and is
renamed into place (``flatlib._io.atomic_write``); in an object store every entry is one object
written by one request, and S3 makes an object visible under its key only once the request that
writes it has completed (the object store's rename), so no partial object is ever read.

Every entry carries, in a header before its bytes, the key it was written under and the SHA-256
of its bytes. A read checks both: an entry whose bytes were altered (a flipped byte that
``torch.load`` would still accept, a value edited in place), one that was moved or copied under
another key (two files swapped, a network saved under another seed's key), or one that cannot be
decoded is a miss, never a value: it is recomputed and overwritten, and the process says once how
many it met (``report_discarded``).

The store lives in ``$FLATLIB_CACHE``, else ``$XDG_CACHE_HOME/flatlib/results``, else
``~/.cache/flatlib/results``. ``$FLATLIB_CACHE`` is a folder (a path, or a ``file://`` URL) or an
S3 URL, ``s3://bucket/prefix``, reached through fsspec and s3fs with the credentials of the usual
AWS environment variables or files (``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``, or
``AWS_PROFILE``; ``AWS_ENDPOINT_URL`` for an S3-compatible service that is not AWS); the project
stores none. A folder and a bucket hold the same layout and the same sealed bytes,
``<root>/<key>``, so either can be synced to the other (``aws s3 sync``, or fsspec's
``put``/``get``) and every entry stays valid.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Callable
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch

from flatlib.infrastructure.output import atomic_write

# Object stores by URL scheme, with the package fsspec needs for each. Only stores where one
# request writes a whole object that no reader sees before it is complete belong here.
OBJECT_STORES = {"s3": "s3fs"}


class StoreError(OSError):
    """A store this process cannot use."""


def _scheme(root: str) -> str | None:
    return root.split("://", 1)[0].lower() if "://" in root else None


def cache_dir() -> Path:
    """The store's folder. A store at an object-store URL has none: a StoreError (use
    ``location()`` to name the store, and the functions below to read and write it)."""
    root = os.environ.get("FLATLIB_CACHE")
    if root:
        scheme = _scheme(root)
        if scheme is None:
            return Path(root).expanduser()
        if scheme == "file":
            url = urlparse(root)
            if url.netloc not in ("", "localhost"):
                raise StoreError(f"FLATLIB_CACHE={root} names a folder on another host; mount it and give its path")
            return Path(url2pathname(url.path))
        if scheme in OBJECT_STORES:
            raise StoreError(f"the store {root} is an object store, not a folder: read and write it through "
                             "flatlib.store's functions")
        raise StoreError(f"FLATLIB_CACHE={root}: a store is a folder (a path or a file:// URL) or one of "
                         f"{', '.join(f'{s}://bucket/prefix' for s in OBJECT_STORES)}")
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flatlib" / "results"


def location() -> str:
    """Where the store is, for messages and for the tasks of an executor (which write into the
    caller's store, ``flatlib.executors.task_environment``): its URL (``s3://bucket/prefix``) or
    the path of its folder."""
    root = os.environ.get("FLATLIB_CACHE", "")
    if _scheme(root) in OBJECT_STORES:
        return root.rstrip("/")
    return str(cache_dir())


def _parts(key: str) -> tuple[str, ...]:
    parts = PurePosixPath(key).parts
    if not parts or PurePosixPath(key).is_absolute() or ".." in parts:
        raise ValueError(f"a store key is a relative path inside the store, got {key!r}")
    return parts


class _Folder:
    """The store as a folder of this machine (or one it mounts): an entry is the file
    ``<root>/<key>``, written to a temporary file beside it and renamed into place."""

    def __init__(self, root: Path):
        self.root = root

    def where(self, key: str) -> Path:
        return self.root.joinpath(*_parts(key))

    def read(self, key: str) -> bytes | None:
        try:
            return self.where(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no entry (or no store folder at all) here
            return None

    def write(self, key: str, sealed: bytes) -> Path:
        atomic_write(self.where(key), sealed)
        return self.where(key)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".writable-", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise StoreError(f"the store {self.root} is not writable ({error.strerror or error}); set FLATLIB_CACHE "
                             "to a folder this process can write to") from error


class _ObjectStore:
    """The store under a URL (``s3://bucket/prefix``), through fsspec: an entry is the object
    ``<prefix>/<key>``, written by one request (one PUT up to 100 MB, above that a multipart
    upload, which S3 also shows only once complete) and read by one GET."""

    def __init__(self, url: str):
        self.url, scheme = url, _scheme(url)
        try:
            import fsspec

            # A client of its own (not fsspec's shared instance), made with the credentials the
            # environment holds now; _backend makes a new one when they change. No listings cache:
            # other processes write the same prefix, and a stale listing would read as a miss.
            self.fs = fsspec.filesystem(scheme, skip_instance_cache=True, use_listings_cache=False)
        except ImportError as error:
            raise StoreError(f"the store {url} needs the package {OBJECT_STORES[scheme]}, which is not installed: "
                             "pip install -r requirements.txt") from error
        self.root = url.split("://", 1)[1].strip("/")
        self.bucket = self.root.split("/", 1)[0]

    def where(self, key: str) -> str:
        return f"{self.url}/{'/'.join(_parts(key))}"

    def _object(self, key: str) -> str:
        return f"{self.root}/{'/'.join(_parts(key))}"

    def read(self, key: str) -> bytes | None:
        try:  # max_concurrency=1: one GET, without the HEAD that s3fs sends first to split large objects
            return self.fs.cat_file(self._object(key), max_concurrency=1)
        except FileNotFoundError:
            return None
        except Exception:  # credentials refused or missing, an endpoint that does not answer:
            self.check()  # the one clear StoreError naming the URL, before any work
            raise

    def write(self, key: str, sealed: bytes) -> str:
        self.fs.pipe_file(self._object(key), sealed)
        return self.where(key)

    def check(self) -> None:
        """Write and delete one empty object: a bucket that does not exist, credentials that are
        refused or missing, or an endpoint that does not answer is one StoreError naming the URL."""
        probe = f"{self.root}/.writable-{uuid.uuid4().hex}.tmp"
        try:
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except FileNotFoundError as error:
            raise StoreError(f"the store {self.url} cannot be used: its bucket {self.bucket!r} does not exist (or "
                             f"these credentials cannot see it). Create it (`aws s3 mb s3://{self.bucket}`) or set "
                             "FLATLIB_CACHE to a bucket that exists") from error
        except PermissionError as error:
            raise StoreError(f"the store {self.url} refused this process's credentials ({error}). Set credentials "
                             "that may write there in the usual AWS variables (AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) or ~/.aws/credentials") from error
        except Exception as error:  # botocore's own errors (no credentials at all, an endpoint that does not answer)
            raise StoreError(f"the store {self.url} cannot be used ({type(error).__name__}: {error}). Check the "
                             "credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and, for "
                             "a service that is not AWS, AWS_ENDPOINT_URL") from error


# What selects the client of an object store: the URL and every AWS setting of the environment,
# so that a process whose credentials or endpoint change (a test, a notebook after `export`) never
# reuses a client signed with the old ones.
_AWS_SETTINGS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE")
_CLIENTS: dict[tuple, _ObjectStore] = {}


def _backend() -> _Folder | _ObjectStore:
    """The store that ``$FLATLIB_CACHE`` names now (executors' tasks change it per task)."""
    url = location()
    if _scheme(url) not in OBJECT_STORES:
        return _Folder(Path(url))
    selector = (url, *(os.environ.get(name) for name in _AWS_SETTINGS))
    if selector not in _CLIENTS:
        _CLIENTS[selector] = _ObjectStore(url)
    return _CLIENTS[selector]


def check_writable() -> str:
    """The store's ``location()``, checked by writing one probe: a folder that cannot be created
    or written, a bucket that does not exist, credentials that are refused: one clear error,
    raised before a sweep starts any work rather than after its first network."""
    _backend().check()
    return location()


def digest(payload) -> str:
    """20 hex digits of the SHA-256 of ``payload`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def path(key: str) -> Path:
    """The file of entry ``key`` in the store's folder (a StoreError for an object store)."""
    _parts(key)
    return _Folder(cache_dir()).where(key)


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
        print(f"store {location()}: {count} entr{'y' if count == 1 else 'ies'} refused and recomputed "
              f"({reasons})", file=stream or sys.stderr)
        _DISCARDED.clear()
    return count


def _get(key: str, decode: Callable[[bytes], Any]):
    sealed = _backend().read(key)
    if sealed is None:
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
    sealed = _backend().read(key)
    if sealed is None:
        return False
    saved = dict(_DISCARDED)
    intact = _opened(key, sealed) is not None
    _DISCARDED.clear()
    _DISCARDED.update(saved)  # a count, not a read: nothing was refused
    return intact


def put_bytes(key: str, raw: bytes) -> Path | str:
    """Store ``raw`` under ``key``; return where the entry is (its file, or its object's URL)."""
    return _backend().write(key, _sealed(key, raw))


def get_bytes(key: str) -> bytes | None:
    return _get(key, bytes)


def put_json(key: str, value) -> Path | str:
    return put_bytes(key, json.dumps(value).encode())


def get_json(key: str):
    """The JSON value stored under ``key``, or None if there is none (or it was corrupt)."""
    return _get(key, json.loads)


def put_torch(key: str, value) -> Path | str:
    buf = io.BytesIO()
    torch.save(value, buf)
    return put_bytes(key, buf.getvalue())


def get_torch(key: str):
    """The tensors (and plain containers of them) stored under ``key``, loaded onto the CPU
    with ``weights_only=True``, or None if there is none (or it was corrupt)."""
    return _get(key, lambda raw: torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True))
