"""The store at an S3 URL (``FLATLIB_CACHE=s3://bucket/prefix``), against a real S3 protocol server:
moto's, its own process on 127.0.0.1, started and stopped here. Entries round-trip with the
folder's layout and bytes (so the two sync); a flipped byte in an object is refused; a bucket that
does not exist and credentials that are refused are each one clear error before any work; sweeps on
worker processes and on a Dask cluster writing to the bucket give the serial table of a disk store
number for number, also when a worker is killed mid-sweep and the sweep resumed; workers that
write elsewhere are an error saying the store is not shared."""
import concurrent.futures
import functools
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from flatlib import executors, store, study
from flatlib import train as ftrain
from flatlib.train import TrainConfig
from training_log import log_training_to, seeds_trained
from worker_probes import die_once_when_training

fsspec = pytest.importorskip("fsspec")
pytest.importorskip("s3fs")
pytest.importorskip("moto")

TINY = dict(dataset="mnist", n=128, widths=(16,), batch_size=32, epochs=1, target_train_acc=None)
# Measures whose last bits depend on the thread count (see study.table_row), so equality is a test.
NAMES = ["simplicity_l2", "relative_flatness", "adaptive_sharpness"]
NUMBERS_PER_NETWORK = 4 + len(NAMES)  # train/test loss and accuracy, then the measures
SEEDS = [0, 1, 2, 3]
REPO = str(Path(study.__file__).resolve().parents[2])
TESTS = str(Path(__file__).resolve().parent)


def configs(seeds) -> list[TrainConfig]:
    return [TrainConfig(**{**TINY, "seed": s}) for s in seeds]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_numbers(table, reference):
    """Every column equal, exactly, except the training wall time (a measurement of the run)."""
    pd.testing.assert_frame_equal(table.drop(columns="train_time_s"), reference.drop(columns="train_time_s"),
                                  check_exact=True)


def start_s3_server(log: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server (``python -m moto.server``) on 127.0.0.1 at a free port, answering."""
    port = free_port()
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5).close()
            return server, endpoint
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"moto's server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    server, endpoint = start_s3_server(tmp_path_factory.mktemp("moto") / "server.log")
    yield endpoint
    server.kill()
    server.wait()


def s3_environment(monkeypatch, endpoint: str) -> None:
    """This process's AWS settings, as a user's environment would hold them, for ``endpoint``."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "flatlib-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "flatlib-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)


def new_bucket(endpoint: str) -> str:
    name = f"flatlib-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=endpoint).mkdir(name)
    return name


@pytest.fixture
def bucket(s3_server, monkeypatch):
    """A fresh bucket, and ``FLATLIB_CACHE=s3://<bucket>/store``; yields (filesystem, bucket)."""
    s3_environment(monkeypatch, s3_server)
    name = new_bucket(s3_server)
    monkeypatch.setenv("FLATLIB_CACHE", f"s3://{name}/store")
    return fsspec.filesystem("s3", skip_instance_cache=True), name


def objects(fs, root: str) -> dict[str, bytes]:
    """Every object under ``root`` (``bucket/prefix``), by its key relative to ``root``."""
    fs.invalidate_cache()
    return {path[len(root) + 1:]: fs.cat_file(path) for path in fs.find(root)}


@pytest.fixture(scope="module")
def serial_disk_table(tmp_path_factory):
    """The reference: the in-process loop, into a store on disk."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("FLATLIB_CACHE", str(tmp_path_factory.mktemp("serial-disk")))
        return study.network_table(configs(SEEDS), names=NAMES, progress=False)


@pytest.fixture
def counted_work(monkeypatch):
    """Training calls and executor runs in this process."""
    started = []
    real_train, real_run = ftrain.train, executors.run
    monkeypatch.setattr(ftrain, "train", lambda config, progress=False: started.append("train") or
                        real_train(config, progress))
    monkeypatch.setattr(executors, "run", lambda *args, **kwargs: started.append("run") or real_run(*args, **kwargs))
    return started


# --------------------------------------------------------------------------- entries

def test_entries_round_trip_through_the_bucket_as_the_same_files_a_folder_holds(bucket, tmp_path, monkeypatch):
    fs, name = bucket
    assert store.location() == f"s3://{name}/store" and store.check_writable() == f"s3://{name}/store"
    assert store.get_json("a/b.json") is None and not store.verified("a/b.json")
    values = [("a/raw", store.put_bytes, store.get_bytes, b"\x00\x01"),
              ("a/b.json", store.put_json, store.get_json, {"value": 1.5}),
              ("networks/t.pt", store.put_torch, store.get_torch, {"w": torch.arange(3.0)})]
    for key, put, _, value in values:
        assert put(key, value) == f"s3://{name}/store/{key}"
    assert store.get_bytes("a/raw") == b"\x00\x01" and store.get_json("a/b.json") == {"value": 1.5}
    assert torch.equal(store.get_torch("networks/t.pt")["w"], torch.arange(3.0)) and store.verified("a/b.json")
    in_bucket = objects(fs, f"{name}/store")  # the probe of check_writable left nothing behind

    folder = tmp_path / "folder"
    monkeypatch.setenv("FLATLIB_CACHE", str(folder))
    for key, put, _, value in values:
        put(key, value)
    in_folder = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert in_bucket == in_folder  # same keys, same sealed bytes: `aws s3 sync` either way keeps every entry

    fs.put(f"{folder}/", f"{name}/synced-up", recursive=True)  # a folder synced up is a store
    fs.get(f"{name}/store/", str(tmp_path / "synced-down"), recursive=True)  # and a bucket synced down
    for root in (f"s3://{name}/synced-up", str(tmp_path / "synced-down")):
        monkeypatch.setenv("FLATLIB_CACHE", root)
        for key, _, get, value in values[:2]:
            assert get(key) == value, root
        assert torch.equal(store.get_torch("networks/t.pt")["w"], torch.arange(3.0))


def test_a_flipped_byte_or_an_object_under_another_key_is_refused(bucket, capsys):
    fs, name = bucket
    key, obj = "networks/a.pt", f"{name}/store/networks/a.pt"
    store.put_torch(key, {"w": torch.arange(1000.0)})
    intact = fs.cat_file(obj)
    flipped = bytearray(intact)
    flipped[len(flipped) // 2] ^= 0x01
    fs.pipe_file(obj, bytes(flipped))
    assert store.get_torch(key) is None and not store.verified(key)
    fs.pipe_file(f"{name}/store/networks/b.pt", intact)  # an intact entry copied under another key
    assert store.get_torch("networks/b.pt") is None
    assert store.report_discarded() == 2
    assert (f"store s3://{name}/store: 2 entries refused and recomputed (1 with bytes that do not match their "
            "checksum; 1 with written under another key)") in capsys.readouterr().err
    store.put_torch(key, {"w": torch.arange(1000.0)})  # recomputed and overwritten
    assert torch.equal(store.get_torch(key)["w"], torch.arange(1000.0))


# --------------------------------------------------------------------------- bad stores

def sweeps(executor):
    return (lambda: study.network_table(configs([0]), names=NAMES, executor=executor, progress=False),
            lambda: study.sweep(configs([0]), executor=executor, progress=False))


@pytest.mark.parametrize("executor", [None, "processes"])
def test_a_bucket_that_does_not_exist_is_one_clear_error_before_any_work(executor, s3_server, monkeypatch,
                                                                         counted_work):
    s3_environment(monkeypatch, s3_server)
    monkeypatch.setenv("FLATLIB_CACHE", "s3://flatlib-no-such-bucket/store")
    for run in sweeps(executor):
        with pytest.raises(store.StoreError, match=re.escape("the store s3://flatlib-no-such-bucket/store cannot be "
                                                             "used: its bucket 'flatlib-no-such-bucket' does not "
                                                             "exist") + ".*aws s3 mb"):
            run()
    assert counted_work == []


def reset_auth(endpoint: str, free_requests: str) -> None:
    """moto's switch for authentication: after ``free_requests`` requests ("0": from now on), a
    request must be signed with an access key its IAM knows."""
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=free_requests.encode(),
                                                  headers={"Content-Type": "text/plain"}, method="POST")).close()


@pytest.mark.parametrize("executor", [None, "processes"])
def test_credentials_the_server_refuses_are_one_clear_error_before_any_work(executor, bucket, s3_server,
                                                                            counted_work):
    _, name = bucket
    reset_auth(s3_server, "0")
    try:
        for run in sweeps(executor):
            with pytest.raises(store.StoreError, match=re.escape(f"the store s3://{name}/store refused this "
                                                                 "process's credentials") + ".*AWS_ACCESS_KEY_ID"):
                run()
    finally:
        reset_auth(s3_server, "inf")
    assert counted_work == []


def test_no_credentials_at_all_is_one_clear_error_before_any_work(bucket, tmp_path, monkeypatch, counted_work):
    _, name = bucket
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable)
    for variable in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(variable, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # not on a cloud machine, whose role would answer
    with pytest.raises(store.StoreError, match=re.escape(f"the store s3://{name}/store cannot be used "
                                                         "(NoCredentialsError") + ".*AWS_ACCESS_KEY_ID"):
        study.network_table(configs([0]), names=NAMES, progress=False)
    assert counted_work == []


# --------------------------------------------------------------------------- sweeps

def logging_processes(log: Path):
    """executors.local_processes whose workers append the seed of every network they train to ``log``."""
    return functools.partial(executors.local_processes, initializer=log_training_to, initargs=(str(log),))


def stored_networks(fs, name: str) -> dict[str, bytes]:
    return {k: v for k, v in objects(fs, f"{name}/store").items() if k.startswith("networks/")}


def seeds_of(keys) -> list[int]:
    seed_of = {f"networks/{c.key()}.pt": c.seed for c in configs(SEEDS)}
    return sorted(seed_of[k] for k in keys)


@pytest.mark.slow
def test_a_sweep_on_worker_processes_with_one_killed_resumes_into_the_bucket_and_gives_the_serial_disk_table(
        bucket, serial_disk_table, tmp_path, monkeypatch):
    fs, name = bucket
    # One worker takes the seeds in order and dies as it starts seed 2, its rows of 0 and 1 stored.
    monkeypatch.setattr(executors, "local_processes", functools.partial(
        executors.local_processes, workers=1, initializer=die_once_when_training, initargs=(2, str(tmp_path / "died"))))
    with pytest.raises(executors.ExecutorError, match="a worker process of the .* sweep died"):
        study.network_table(configs(SEEDS), names=NAMES, executor="processes", progress=False)
    before = stored_networks(fs, name)
    done = seeds_of(before)
    assert done == [0, 1]
    assert all(store.verified(k) for k in objects(fs, f"{name}/store"))  # every object a whole entry

    log = tmp_path / "trained.log"  # resumed on one worker per core, writing the bucket side by side
    monkeypatch.setattr(executors, "local_processes", logging_processes(log))
    table = study.network_table(configs(SEEDS), names=NAMES, executor="processes", progress=False)
    assert_same_numbers(table, serial_disk_table)
    assert seeds_trained(log) == [2, 3]  # what was stored was not trained again
    after = stored_networks(fs, name)
    assert {k: after[k] for k in before} == before
    stored = objects(fs, f"{name}/store")  # the entries and nothing else: no probe, no partial object
    assert sorted({k.split("/")[0] for k in stored}) == ["measures", "networks"]
    assert len(stored) == len(SEEDS) * (1 + NUMBERS_PER_NETWORK) and all(store.verified(k) for k in stored)
    monkeypatch.setattr(executors, "local_processes", None)  # everything is stored: a repeat starts no worker
    pd.testing.assert_frame_equal(study.network_table(configs(SEEDS), names=NAMES, executor="processes",
                                                      progress=False), table, check_exact=True)


class ThreadsReachingAnotherServer(concurrent.futures.ThreadPoolExecutor):
    """A worker (a thread of this process) whose tasks reach S3 at ``endpoint``, as a worker
    machine with other AWS settings would; the caller keeps its own."""

    def __init__(self, endpoint: str):
        super().__init__(max_workers=1)
        self.endpoint = endpoint

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(self._elsewhere, fn, *args, **kwargs)

    def _elsewhere(self, fn, *args, **kwargs):
        own = os.environ["AWS_ENDPOINT_URL"]
        os.environ["AWS_ENDPOINT_URL"] = self.endpoint  # the caller waits meanwhile, reading nothing
        try:
            return fn(*args, **kwargs)
        finally:
            os.environ["AWS_ENDPOINT_URL"] = own


def test_workers_that_write_to_another_server_are_an_error_saying_the_store_is_not_shared(bucket, tmp_path):
    _, name = bucket
    other, endpoint = start_s3_server(tmp_path / "other-server.log")
    try:
        other_fs = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=endpoint)
        other_fs.mkdir(name)  # a bucket of the same name, elsewhere
        with ThreadsReachingAnotherServer(endpoint) as elsewhere:
            with pytest.raises(executors.ExecutorError, match=re.escape(f"is not in the store s3://{name}/store "
                                                                        "although its task") + ".*same endpoint"):
                study.network_table(configs([0]), names=[], executor=elsewhere, progress=False)
        assert len(stored_networks(other_fs, name)) == 1  # the worker did its work, on the other server
    finally:
        other.kill()
        other.wait()


@pytest.fixture
def dask_cluster(bucket, tmp_path):
    """A Dask scheduler and a single-threaded worker, each its own process on 127.0.0.1 started
    as the README starts them (`dask scheduler`, `dask worker ADDRESS --nthreads 1`), with this
    process's AWS environment; yields the scheduler's address."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS])}
    logs = open(tmp_path / "cluster.log", "w")
    common = ["--no-dashboard", "--host", "127.0.0.1"]
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0",
                                   "--scheduler-file", str(scheduler_file), *common], env=env, stdout=logs,
                                  stderr=logs)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        address = json.loads(scheduler_file.read_text())["address"]
        processes += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, *common,
                                        "--nthreads", "1", "--no-nanny", "--death-timeout", "60"], env=env,
                                       stdout=logs, stderr=logs)]
        yield address
    finally:
        for process in processes:
            process.kill()
            process.wait()
        logs.close()


@pytest.mark.slow
@pytest.mark.dask
def test_a_dask_sweep_into_the_bucket_gives_the_serial_disk_table(bucket, dask_cluster, serial_disk_table):
    from distributed import Client

    fs, name = bucket
    with Client(dask_cluster, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(1, timeout=60)
    table = study.network_table(configs(SEEDS[:2]), names=NAMES, executor=dask_cluster, progress=False)
    assert_same_numbers(table, serial_disk_table.iloc[:2])
    assert len(objects(fs, f"{name}/store")) == 2 * (1 + NUMBERS_PER_NETWORK)
