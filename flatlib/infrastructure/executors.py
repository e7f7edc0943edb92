"""Where the tasks of a sweep run: in this process, in local worker processes, or on a Dask
cluster.

A task is a module-level function of picklable arguments (``flatlib.study`` submits one per
network). It writes what it computes into the content-addressed store (``flatlib.store``), the
only result store, and returns a small receipt; the caller then reads the results from the store,
so they do not depend on where the tasks ran, and a sweep interrupted on any executor resumes
on any other.

Executors, by the ``executor`` argument:

- ``None``: the executor named by the environment variable ``FLATLIB_EXECUTOR`` (any of the
  names below, e.g. ``processes`` or ``tcp://host:8786``), else ``"serial"``: so a chapter's
  code stays the same and whoever runs it picks the path.
- ``"serial"``: no tasks; the caller computes in its own process.
- ``"processes"``: one single-threaded worker process per core, started with the "spawn"
  method (torch and ``fork`` do not mix), shut down when the sweep ends.
- a ``concurrent.futures.Executor`` you started (e.g. a ``ProcessPoolExecutor`` of another
  size): used as it is, left running.
- a Dask scheduler address (``"tcp://host:8786"``): a ``distributed.Client`` connects for the
  sweep and closes after it; an address no scheduler answers within ``CONNECT_TIMEOUT_S``
  seconds is one clear error naming it.
- a ``distributed.Client``: used as it is, left open. Dask reschedules the tasks of a worker
  that dies; a task that is run twice recomputes only what its first run did not store.

Whatever the executor, configs on a CUDA device that differ only in their seed are trained first,
in this process, as vectorised ensembles (``flatlib.ensemble.dispatched_groups``, ``flatlib.ensemble.sweep``), which
store each network under its config's key as the loop would; the rest of the sweep (the other
networks, and every measure) then goes as above. On CPU every network is trained by the loop.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import socket
import threading
from typing import Callable, Sequence

from flatlib.infrastructure.output import progress as progress_bar
from flatlib.infrastructure.threads import one_thread

SERIAL, PROCESSES = "serial", "processes"
CONNECT_TIMEOUT_S = 5

# Tests only: take the ensemble path on CPU too, to compare its networks with the loop's there. A
# store filled this way holds CPU networks the loop did not train (``flatlib.ensemble``'s docstring).
ENSEMBLE_ON_CPU = False


class ExecutorError(RuntimeError):
    """An executor that cannot run the sweep: unknown, unreachable, or whose workers failed."""


def chosen(executor):
    """``executor``, or for None the one ``$FLATLIB_EXECUTOR`` names (default "serial")."""
    return (os.environ.get("FLATLIB_EXECUTOR") or SERIAL) if executor is None else executor


def is_serial(executor) -> bool:
    return executor is None or executor == SERIAL


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _is_dask_client(executor) -> bool:
    return type(executor).__name__ == "Client" and type(executor).__module__.startswith("distributed")


def describe(executor) -> str:
    """A short name of ``executor`` for messages and summaries."""
    if is_serial(executor):
        return SERIAL
    if executor == PROCESSES:
        return f"{PROCESSES} ({cores()} workers)"
    if isinstance(executor, str):
        return f"dask {executor}"
    if _is_dask_client(executor):
        return f"dask {executor.scheduler.address}"
    return type(executor).__name__


def local_processes(workers: int | None = None, initializer: Callable | None = None,
                    initargs: tuple = ()) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``workers`` (default: one per core) fresh interpreters started by "spawn",
    each running ``initializer(*initargs)`` first. The tasks set their own thread count."""
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers or cores(),
                                                  mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=initializer, initargs=initargs)


def run(task: Callable, argsets: Sequence[tuple], executor, desc: str, progress: bool = True,
        keys: Sequence[str] | None = None) -> list:
    """``[task(*args) for args in argsets]``, computed on ``executor`` (see the module
    docstring; not ``"serial"``), with a progress bar over finished tasks. ``keys`` name the
    tasks on a Dask cluster (default: Dask's own). The first task that raises cancels the ones
    not yet started and is raised here."""
    kind = validate(executor)
    if kind == SERIAL:
        raise ValueError("the serial executor runs no tasks: the caller computes in its own process")
    if kind == PROCESSES:
        with local_processes() as pool:
            return _run_futures(pool, task, argsets, desc, progress, owned=True)
    if kind == "futures":
        return _run_futures(executor, task, argsets, desc, progress, owned=False)
    if kind == "dask address":
        client = _connect(executor)
        try:
            return _run_dask(client, task, argsets, desc, progress, keys)
        finally:
            client.close()
    return _run_dask(executor, task, argsets, desc, progress, keys)


def validate(executor) -> str:
    """The kind of ``executor``: "serial", "processes", "futures", "dask address" or "dask
    client"; anything else is a ValueError that lists the valid ones."""
    if is_serial(executor):
        return SERIAL
    if executor == PROCESSES:
        return PROCESSES
    if isinstance(executor, concurrent.futures.Executor):
        return "futures"
    if isinstance(executor, str) and "://" in executor:
        return "dask address"
    if _is_dask_client(executor):
        return "dask client"
    raise ValueError(f"unknown executor {executor!r}: use None or {SERIAL!r}, {PROCESSES!r}, a "
                     "concurrent.futures.Executor, a Dask scheduler address ('tcp://host:port') or a "
                     "distributed.Client")


def _run_futures(pool, task, argsets, desc, progress, owned):
    futures = [pool.submit(task, *args) for args in argsets]
    index = {future: i for i, future in enumerate(futures)}
    results = [None] * len(futures)
    try:
        for future in progress_bar(concurrent.futures.as_completed(futures), desc, progress, total=len(futures)):
            results[index[future]] = future.result()
    except concurrent.futures.process.BrokenProcessPool as error:
        raise ExecutorError(f"a worker process of the {desc} sweep died ({error}); what finished is in the "
                            "store, so running the sweep again resumes it. From a script, start the sweep "
                            "under `if __name__ == \"__main__\":`: \"spawn\" starts each worker by importing "
                            "the script") from error
    finally:
        for future in futures:
            future.cancel()
        if owned:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _connect(address: str):
    try:
        from distributed import Client
    except ImportError as error:
        raise ExecutorError(f"executor {address!r} is a Dask scheduler, but the package 'distributed' is not "
                            "installed: pip install -r requirements.txt") from error
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ExecutorError(f"no Dask scheduler answered at {address} within {CONNECT_TIMEOUT_S} s ({error}). "
                            "Start one (`dask scheduler`) or check the address and that this machine "
                            "can reach it.") from error


def _run_dask(client, task, argsets, desc, progress, keys):
    from distributed import as_completed

    # pure=False: a task is a side effect on the store, not a value Dask may share or drop
    futures = [client.submit(task, *args, key=None if keys is None else keys[i], pure=False)
               for i, args in enumerate(argsets)]
    index = {future.key: i for i, future in enumerate(futures)}
    results = [None] * len(futures)
    try:
        for future in progress_bar(as_completed(futures, loop=client.loop), desc, progress, total=len(futures)):
            results[index[future.key]] = future.result()
    finally:
        client.cancel([f for f in futures if not f.done()])
    return results


# ------------------------------------------------------------------ tasks that write the store

# One task at a time per worker process: torch's thread count is process-wide, and every task
# sets and restores it (``flatlib.threads.one_thread``), so two tasks in threads of one process
# would change each other's.
TASK_LOCK = threading.Lock()


@contextlib.contextmanager
def task_environment(store_root: str):
    """The block of one task on a worker: alone in its process (``TASK_LOCK``), on one thread,
    writing into the store at ``store_root`` (the submitting process's ``store.location()``, a
    folder's path or an object store's URL, whatever the worker's own ``FLATLIB_CACHE``)."""
    with TASK_LOCK:
        saved = os.environ.get("FLATLIB_CACHE")
        os.environ["FLATLIB_CACHE"] = store_root
        try:
            with one_thread():
                yield
        finally:
            if saved is None:
                del os.environ["FLATLIB_CACHE"]
            else:
                os.environ["FLATLIB_CACHE"] = saved


def receipt() -> dict:
    """What a task returns: where it ran, and what keyed the entries it stored (the versions it
    used and its environment class, ``flatlib.keys``)."""
    from flatlib.infrastructure import keys

    return {"host": socket.gethostname(), "pid": os.getpid(), "versions": keys.used(),
            "environment": keys.environment()}


def check_receipt(received: dict) -> None:
    """Refuse a receipt whose worker keyed its results otherwise than this process would: another
    version of a computation it used, or another environment class (a worker on another kind of
    CPU). Its entries are under keys this process never reads."""
    from flatlib.infrastructure import keys

    where = f"the worker on {received['host']} (pid {received['pid']})"
    differ = sorted(name for name, version in received["versions"].items() if keys.current(name) != version)
    if differ:
        raise ExecutorError(f"{where} runs other versions than this process of {', '.join(differ)}, so it stored "
                            "its results under other keys; install the same flatlib on every worker")
    if received["environment"] != keys.environment():
        raise ExecutorError(f"{where} runs in another environment class ({received['environment']}) than this "
                            f"process ({keys.environment()}): its numbers may differ in the last bits and are stored "
                            "under other keys. Run the sweep on workers of one kind of machine.")


def run_checked(task: Callable, argsets: Sequence[tuple], executor, desc: str, progress: bool = True,
                keys: Sequence[str] | None = None) -> None:
    """``run`` a task that writes into the store and returns ``receipt()``, and check every
    receipt (``check_receipt``)."""
    for received in run(task, argsets, executor, desc, progress, keys=keys):
        check_receipt(received)
