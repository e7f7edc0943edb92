"""The executors of flatlib.study: local worker processes and a real Dask cluster (a scheduler
and two workers, separate processes on the loopback interface) give the serial table, number
for number, with every network trained once and stored once, also when the sweep's parent or
one worker is killed mid-sweep; bad executors and stores fail at once with one clear error."""
import concurrent.futures
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from flatlib import data, executors, store, study
from flatlib import train as ftrain
from flatlib.train import TrainConfig
from training_log import log_training_to, seeds_trained

TINY = dict(dataset="mnist", n=128, widths=(16,), batch_size=32, epochs=1, target_train_acc=None)
# Measures whose last bits depend on the thread count (see study.table_row), so equality is a test.
NAMES = ["simplicity_l2", "relative_flatness", "adaptive_sharpness"]
NUMBERS_PER_NETWORK = 4 + len(NAMES)  # train/test loss and accuracy, then the measures
REPO = str(Path(study.__file__).resolve().parents[2])
TESTS = str(Path(__file__).resolve().parent)


def configs(seeds) -> list[TrainConfig]:
    return [TrainConfig(**{**TINY, "seed": s}) for s in seeds]


def serial_table(root: Path, monkeypatch, seeds):
    """The reference: today's in-process loop, into a store of its own."""
    with monkeypatch.context() as m:
        m.setenv("FLATLIB_CACHE", str(root))
        return study.network_table(configs(seeds), names=NAMES, progress=False)


def assert_same_numbers(table, reference):
    """Every column equal, exactly, except the training wall time (a measurement of the run)."""
    pd.testing.assert_frame_equal(table.drop(columns="train_time_s"), reference.drop(columns="train_time_s"),
                                  check_exact=True)


def entries(root: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """The store's complete entries (no temporary files), each with its inode and mtime."""
    out = {}
    for kind, suffix in (("networks", ".pt"), ("measures", ".json")):
        files = (root / kind).glob(f"*{suffix}")
        out[kind] = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}
    return out


def logging_processes(log: Path):
    """executors.local_processes whose workers append the seed of every network they train to ``log``."""
    return functools.partial(executors.local_processes, initializer=log_training_to, initargs=(str(log),))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- local processes

@pytest.mark.slow
def test_processes_give_the_serial_table_and_train_each_network_once(tmp_path, monkeypatch):
    reference = serial_table(tmp_path / "serial", monkeypatch, [0, 1, 2, 1])
    log = tmp_path / "trained.log"
    monkeypatch.setattr(executors, "local_processes", logging_processes(log))
    monkeypatch.setenv("FLATLIB_CACHE", str(tmp_path / "processes"))
    table = study.network_table(configs([0, 1, 2, 1]), names=NAMES, executor="processes", progress=False)
    assert_same_numbers(table, reference)
    assert seeds_trained(log) == [0, 1, 2]  # seed 1, listed twice, is one task
    stored = entries(tmp_path / "processes")
    assert len(stored["networks"]) == 3 and len(stored["measures"]) == 3 * NUMBERS_PER_NETWORK
    # everything is stored, so a repeat reads the store and starts no worker
    monkeypatch.setattr(executors, "local_processes", None)
    pd.testing.assert_frame_equal(study.network_table(configs([0, 1, 2, 1]), names=NAMES, executor="processes",
                                                      progress=False), table, check_exact=True)
    assert [r.config.seed for r in study.sweep(configs([2, 0]), executor="processes", progress=False)] == [2, 0]


KILLED_SWEEP = """
import json, sys
from flatlib import study
from flatlib.train import TrainConfig
tiny, names, seeds = json.loads(sys.argv[1])
study.network_table([TrainConfig(**{**tiny, "seed": s}) for s in seeds], names=names, executor="processes",
                    progress=False)
"""


@pytest.mark.slow
def test_a_killed_processes_sweep_resumes_without_retraining(tmp_path, monkeypatch):
    root, seeds = tmp_path / "store", list(range(6))
    env = {**os.environ, "FLATLIB_CACHE": str(root), "PYTHONPATH": REPO}
    sweep = subprocess.Popen([sys.executable, "-c", KILLED_SWEEP, json.dumps([TINY, NAMES, seeds])], env=env,
                             start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((root / "networks").glob("*.pt")) and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(sweep.pid, signal.SIGKILL)  # the parent and its workers, as a lost machine would
    sweep.wait()
    assert sweep.returncode == -signal.SIGKILL, sweep.stderr.read().decode()[-2000:]
    before = entries(root)
    key_to_seed = {f"{c.key()}.pt": c.seed for c in configs(seeds)}
    done = sorted(key_to_seed[name] for name in before["networks"])
    assert 1 <= len(done) < len(seeds), "the sweep was not killed mid-way; the test proves nothing"

    log = tmp_path / "trained.log"
    monkeypatch.setattr(executors, "local_processes", logging_processes(log))
    monkeypatch.setenv("FLATLIB_CACHE", str(root))
    table = study.network_table(configs(seeds), names=NAMES, executor="processes", progress=False)
    assert seeds_trained(log) == sorted(set(seeds) - set(done))
    after = entries(root)
    for kind in ("networks", "measures"):  # nothing stored before the kill was written again
        assert {name: after[kind][name] for name in before[kind]} == before[kind]
    assert len(after["networks"]) == len(seeds) and len(after["measures"]) == len(seeds) * NUMBERS_PER_NETWORK
    assert_same_numbers(table, serial_table(tmp_path / "serial", monkeypatch, seeds))


def test_a_row_is_the_same_on_two_threads_as_on_one():
    result = study.trained(TrainConfig(**TINY))
    train_set = data.load("mnist", "train", n=TINY["n"], seed=0)
    test_set = data.load("mnist", "test", n=500, seed=0)
    before = torch.get_num_threads()
    tables = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            tables[threads] = study.measure_table({"net": result.model}, train_set, test_set, names=NAMES,
                                                  progress=False)
            assert torch.get_num_threads() == threads  # restored after the row
    finally:
        torch.set_num_threads(before)
    pd.testing.assert_frame_equal(tables[1], tables[2], check_exact=True)


# --------------------------------------------------------------------------- Dask

@pytest.fixture
def dask_cluster(tmp_path):
    """A Dask scheduler and two single-threaded workers without nannies (a killed worker stays
    dead), each a separate process on 127.0.0.1; yields (address, worker processes)."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS])}
    logs = open(tmp_path / "cluster.log", "w")
    common = ["--scheduler-file", str(scheduler_file), "--no-dashboard", "--host", "127.0.0.1"]
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0", *common],
                                  env=env, stdout=logs, stderr=logs)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", *common, "--nthreads", "1",
                                     "--no-nanny", "--death-timeout", "60"], env=env, stdout=logs, stderr=logs)
                   for _ in range(2)]
        processes += workers
        yield address, workers
    finally:
        for process in processes:
            process.kill()
            process.wait()
        logs.close()


@pytest.mark.slow
@pytest.mark.dask
def test_dask_sweep_with_a_worker_killed_mid_sweep_stores_each_network_once_with_the_serial_numbers(
        dask_cluster, tmp_path, monkeypatch):
    from distributed import Client

    address, workers = dask_cluster
    seeds = list(range(6))
    reference = serial_table(tmp_path / "serial", monkeypatch, seeds)
    root = tmp_path / "dask"
    monkeypatch.setenv("FLATLIB_CACHE", str(root))
    with Client(address, timeout=30, set_as_default=False) as monitor:
        monitor.wait_for_workers(2, timeout=60)
        by_pid = {worker.pid: worker for worker in workers}
        worker_of = {addr: by_pid[pid] for addr, pid in monitor.run(os.getpid).items()}
        assert len(set(worker_of.values())) == 2  # two separate worker processes
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            sweep = thread.submit(study.network_table, configs(seeds), names=NAMES, executor=address,
                                  progress=False)
            deadline, victim = time.monotonic() + 120, None
            while victim is None and not sweep.done() and time.monotonic() < deadline:
                busy = [addr for addr, keys in monitor.processing().items() if keys]
                if busy and list((root / "networks").glob("*.pt")):
                    victim, held = worker_of[busy[0]], monitor.processing()[busy[0]]
                    victim.kill()  # SIGKILL while it holds a network's task
                time.sleep(0.01)
            assert victim is not None, "no worker was killed mid-sweep; the test proves nothing"
            table = sweep.result(timeout=300)
            # the scheduler's log: the tasks the victim held were taken back from it and finished elsewhere
            moves = [(key, start, finish) for source, key, start, finish, *_ in monitor.story(*held)
                     if source == "scheduler"]
    assert all((key, "processing", "released") in moves and (key, "processing", "memory") in moves for key in held)
    assert victim.wait() == -signal.SIGKILL and all(w.poll() is None for w in workers if w is not victim)
    assert_same_numbers(table, reference)
    stored = entries(root)
    assert len(stored["networks"]) == len(seeds) and len(stored["measures"]) == len(seeds) * NUMBERS_PER_NETWORK
    assert all(study.load_network(c) is not None for c in configs(seeds))


# --------------------------------------------------------------------------- bad input

@pytest.fixture
def counted_work(monkeypatch):
    """Training calls and executor runs in this process."""
    started = []
    real_train, real_run = ftrain.train, executors.run
    monkeypatch.setattr(ftrain, "train", lambda config, progress=False: started.append("train") or
                        real_train(config, progress))
    monkeypatch.setattr(executors, "run", lambda *args, **kwargs: started.append("run") or real_run(*args, **kwargs))
    return started


@pytest.mark.slow
def test_an_unreachable_scheduler_fails_within_seconds_naming_its_address(counted_work):
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    with pytest.raises(executors.ExecutorError, match=re.escape(address)):
        study.network_table(configs([0]), names=[], executor=address, progress=False)
    assert time.perf_counter() - start < executors.CONNECT_TIMEOUT_S + 10
    assert counted_work == ["run"]  # it never trained


def test_an_unknown_executor_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown executor 'threads'.*'processes'"):
        study.network_table(configs([0]), names=[], executor="threads", progress=False)


@pytest.mark.parametrize("executor", [None, "processes", "tcp://127.0.0.1:9"])
def test_a_store_that_cannot_be_written_is_refused_before_any_work(executor, tmp_path, monkeypatch, counted_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FLATLIB_CACHE", str(blocker / "store"))  # a folder inside a file: even root cannot
    for run in (lambda: study.network_table(configs([0]), names=NAMES, executor=executor, progress=False),
                lambda: study.sweep(configs([0]), executor=executor, progress=False)):
        with pytest.raises(store.StoreError, match=f"the store {re.escape(str(blocker / 'store'))} is not writable"):
            run()
    assert counted_work == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_store_folder_is_refused(tmp_path, monkeypatch, counted_work):
    root = tmp_path / "store"
    root.mkdir(mode=0o555)
    monkeypatch.setenv("FLATLIB_CACHE", str(root))
    with pytest.raises(store.StoreError, match="not writable"):
        study.network_table(configs([0]), names=[], executor="processes", progress=False)
    assert counted_work == []


def test_a_store_that_cannot_be_written_but_holds_every_number_serves_the_table(monkeypatch, counted_work):
    table = study.network_table(configs([0, 1]), names=NAMES, progress=False)
    done = list(counted_work)

    def refused():
        raise store.StoreError("the store is not writable (read-only)")

    monkeypatch.setattr(store, "check_writable", refused)
    again = study.network_table(configs([0, 1]), names=NAMES, progress=False)
    assert again.equals(table) and counted_work == done
    assert [r.model.state_dict().keys() for r in study.sweep(configs([0, 1]), progress=False)]
    with pytest.raises(store.StoreError, match="not writable"):  # a number it lacks is still refused before work
        study.network_table(configs([0, 1, 2]), names=NAMES, progress=False)
    assert counted_work == done


def test_the_environment_names_the_default_executor(monkeypatch):
    from flatlib import executors

    monkeypatch.delenv("FLATLIB_EXECUTOR", raising=False)
    assert executors.chosen(None) == "serial"
    monkeypatch.setenv("FLATLIB_EXECUTOR", "processes")
    assert executors.chosen(None) == "processes" and executors.chosen("serial") == "serial"
    monkeypatch.setenv("FLATLIB_EXECUTOR", "threads-please")
    with pytest.raises(ValueError, match="threads-please"):
        study.network_table([], executor=None)
