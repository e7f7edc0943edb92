"""Running a chapter's notebook: papermill in a kernel of this interpreter (``execute``), one run
at a time per output folder (an OS lock, ``exclusive``), and Ctrl-C or SIGTERM that stops the
kernel too (``stopped_by_ctrl_c``). Part of ``flatlib.runner``, which re-exports it.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat

from flatlib.publishing.manifest import ChapterError, read_notebook


def execute(source: Path, executed: Path, params: dict, progress: bool, kernels: list) -> None:
    """Run the chapter's notebook with papermill, in the folder of ``executed``; the kernel's
    manager is appended to ``kernels``."""
    import papermill

    # The kernel must be this interpreter, not whatever `python` is first on PATH, and it draws
    # no progress bars: they belong in a terminal, never in a published page.
    saved = {k: os.environ.get(k) for k in ("PATH", "TQDM_DISABLE")}
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + (saved["PATH"] or "")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            as_ipynb = Path(tmp) / executed.name
            nbformat.write(read_notebook(source), as_ipynb)
            # The kernel's own log would tell the terminal that it talks to this process over TCP
            # on localhost without encryption; cells' output and errors come back as messages.
            papermill.execute_notebook(str(as_ipynb), str(executed), parameters=params, kernel_name="python3",
                                       cwd=str(executed.parent), progress_bar=progress,
                                       kernel_manager_class=_remembered_in(kernels),
                                       extra_arguments=["--IPKernelApp.log_level=ERROR"])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def keep_failed(scratch: Path, failed: Path) -> None:
    shutil.rmtree(failed, ignore_errors=True)
    scratch.rename(failed)


@contextmanager
def exclusive(chapter: str, out_dir: Path):
    """Hold an exclusive ``flock`` on ``.<out>.lock`` for the block, or refuse, naming the holder.

    The lock belongs to the open file, so the OS releases it when the process ends, however it
    ends: a lock file left by a killed run blocks nothing. The file is removed before it is
    released; a run that opened it just before then finds, once it holds the lock, that the
    path no longer leads to its file, and starts again."""
    path = out_dir.parent / f".{out_dir.name}.lock"
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a run that is just starting"
            handle.close()
            raise ChapterError(f"Another run is already running into {out_dir} ({holder}). Wait for it to "
                               f"finish or stop it, or write elsewhere with --out.") from None
        try:
            current = os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()
    try:
        handle.truncate(0)
        handle.write(f"chapter {chapter!r}, pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def _remembered_in(kernels: list) -> type:
    """A kernel manager class for nbclient that appends each manager it makes to ``kernels``."""
    from jupyter_client import AsyncKernelManager

    class RememberedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            kernels.append(self)

    return RememberedKernelManager


def _kill(kernels: list) -> None:
    """SIGKILL each kernel's process group: the kernel and whatever workers it started."""
    for manager in kernels:
        process = getattr(manager.provisioner, "process", None)
        if process is None or process.poll() is not None:
            continue
        try:
            os.killpg(getattr(manager.provisioner, "pgid", None) or process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal: SIGINT (Ctrl-C) or SIGTERM (``kill``, a service manager, a
    batch system's time limit). ``signum`` is the signal; an exit status is 128 + it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stopped_by_ctrl_c(kernels: list):
    """Make Ctrl-C or SIGTERM stop the kernels in ``kernels`` and raise :class:`Stopped` (a
    KeyboardInterrupt), for the block.

    jupyter_client starts a kernel in a session of its own, so the terminal's SIGINT reaches only
    this process. Without this, stopping the kernel is left to nbclient's clean-up on the way out,
    and a Ctrl-C landing during that clean-up would leave the kernel computing in the background
    with no one to collect its results. SIGTERM, by default, would end this process at once and
    leave the kernel running and the scratch folder behind, so it is handled the same way. The
    first signal kills the kernels and interrupts; later ones, until the block ends, only make
    sure they are dead, so an impatient second Ctrl-C cannot cut the run's own clean-up (keeping
    the notebook, the message) short.
    Signal handlers belong to the main thread: elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = False

    def on_signal(signum, frame):
        nonlocal interrupted
        _kill(kernels)
        if not interrupted:
            interrupted = True
            raise Stopped(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        _kill(kernels)  # a kernel whose start was interrupted is not shut down by nbclient
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
