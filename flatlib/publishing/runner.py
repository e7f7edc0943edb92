"""The chapter runner: validated parameters in, executed notebook and summary.json out.

``python -m flatlib run <chapter> [-p key value ...] [--out DIR]`` wraps papermill. Chapters
are registered once, in the manifest ``chapters.yml`` (:func:`manifest`): each names its source,
a MyST Markdown notebook (jupytext) such as ``book/<chapter>/<chapter>.md``, its smoke
parameters and its published runs. The source's cell tagged ``parameters`` holds one
``name = literal`` line per parameter, and those literals are the defaults and the types.
Unknown names, values of another type than the default, values out of their declared range
and combinations that break a chapter's constraints (``flatlib.params``) are rejected before
anything executes, and so is an output folder the run must not or cannot write
(:func:`output_folder`: a published chapter is replaced only by its own published parameters,
or with ``--force-publish``). The run
happens in a scratch folder beside the output, ``.<out>.partial/``, and is moved into place only
when it succeeded, so a failed run never leaves a half-written chapter behind (its executed
notebook is kept in ``<out>.failed/`` for diagnosis). The executed ``.ipynb`` is what the site
renders.

One run at a time writes a given output folder: it holds an OS lock (``flock``) on
``.<out>.lock`` beside it, and a second run is refused naming the first. The OS drops the lock
when its process dies, however it dies, so a killed run blocks nothing; the next run removes
the scratch folder it left. Ctrl-C or SIGTERM stops the kernel too (it runs in a session of its
own and never sees the terminal's signal) and says how to resume: what was trained and measured
is in the store.
"""
from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from flatlib.publishing import params as fparams
from flatlib.publishing import report

BOOK = report.ROOT / "book"
RUNS = report.ROOT / "runs"
MANIFEST = report.ROOT / "chapters.yml"
# Tags the site reads (Jupyter Book 1): the parameter cells fold away, the summary cell vanishes.


class ChapterError(ValueError):
    """A chapter name or parameter the runner cannot accept, or an output folder another run is
    writing; the message says what it can accept."""


@dataclass(frozen=True)
class PublishedRun:
    """A run whose executed notebook is part of the published book."""

    chapter: str
    folder: str
    params: dict = field(default_factory=dict)
    claims: tuple[str, ...] = ()
    cold_minutes: float | None = None  # measured from an empty store on the 2-core CPU

    @property
    def out_dir(self) -> Path:
        return BOOK / self.folder

    @property
    def notebook(self) -> Path:
        return self.out_dir / f"{self.chapter}.ipynb"


@dataclass(frozen=True)
class Chapter:
    name: str
    source: Path
    smoke: dict
    published: tuple[PublishedRun, ...]
    ranges: dict = field(default_factory=dict)
    constraints: tuple[fparams.Constraint, ...] = ()


def manifest(path: Path | None = None) -> dict[str, Chapter]:
    """The chapters registered in ``chapters.yml``, in order; a malformed entry is one clear error."""
    import yaml

    from flatlib.publishing import claims

    path = Path(path or MANIFEST)
    raw = yaml.safe_load(path.read_text()) or {}
    found = {}
    for name, entry in (raw.get("chapters") or {}).items():
        where = f"{path.name}: chapter {name!r}"
        unknown = sorted(set(entry) - {"source", "smoke", "published", "ranges", "constraints"})
        if unknown or "source" not in entry:
            raise ChapterError(f"{where} needs 'source' and takes only source, smoke, published, ranges, "
                               f"constraints; got {sorted(entry)}")
        ranges = dict(entry.get("ranges") or {})
        for param, spec in ranges.items():
            try:
                fparams.validate_spec(param, spec)
            except fparams.RangeError as exc:
                raise ChapterError(f"{where}: {exc}") from None
        try:
            constraints = tuple(fparams.constraint(spec) for spec in entry.get("constraints") or ())
        except fparams.ConstraintError as exc:
            raise ChapterError(f"{where}: {exc}") from None
        runs = []
        for run in entry.get("published") or []:
            ids = tuple(run.get("claims") or ())
            bad = sorted(set(ids) - set(claims.CLAIMS))
            if bad or "folder" not in run:
                raise ChapterError(f"{where}: a published run needs a folder and known claim ids; got {run}")
            unknown_keys = sorted(set(run) - {"folder", "params", "claims", "cold_minutes"})
            if unknown_keys:
                raise ChapterError(f"{where}: a published run takes folder, params, claims, cold_minutes; "
                                   f"got {unknown_keys}")
            runs.append(PublishedRun(name, run["folder"], dict(run.get("params") or {}), ids,
                                     run.get("cold_minutes")))
        found[name] = Chapter(name, path.parent / entry["source"], dict(entry.get("smoke") or {}), tuple(runs),
                              ranges, constraints)
    return found


def published() -> list[PublishedRun]:
    """What ``make reproduce`` re-runs, in the manifest's order."""
    return [run for chapter in manifest().values() for run in chapter.published]


def chapters() -> dict[str, Path]:
    """Every chapter's source, by name."""
    return {name: chapter.source for name, chapter in manifest().items()}


def chapter_path(name: str) -> Path:
    found = chapters()
    if name not in found:
        raise ChapterError(f"Unknown chapter {name!r}. Chapters: {', '.join(found) or '(none yet)'}.")
    if not found[name].is_file():
        raise ChapterError(f"Chapter {name!r} is registered in {MANIFEST.name} "
                           f"but its source {found[name]} is missing.")
    return found[name]


def read_notebook(path: Path):
    """A chapter source as a notebook: MyST Markdown through jupytext, ``.ipynb`` as it is."""
    if Path(path).suffix == ".md":
        import jupytext

        return jupytext.read(path)
    return nbformat.read(path, as_version=4)


def parameters(notebook: Path) -> dict:
    """The defaults in the source's ``parameters`` cell, as Python values, in order."""
    nb = read_notebook(notebook)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ChapterError(f"{notebook} must have exactly one cell tagged 'parameters', found {len(cells)}.")
    defaults = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            defaults[node.targets[0].id] = ast.literal_eval(node.value)
    return defaults


# What a parameter of each type takes, in words, for messages.
_TAKES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_TAKES_ITEMS = {bool: "true or false", int: "integers", float: "numbers", str: "strings"}


def _item_type(default: list) -> type | None:
    """The type a list parameter's items must have: its default's (int and float: float)."""
    kinds = {type(item) for item in default}
    if kinds == {int, float}:
        return float
    return kinds.pop() if len(kinds) == 1 else None


def _exactly(name: str, value, kind: type, raw, takes: str):
    """``value`` as ``kind`` if it is one exactly (an int also passes as a float, converted; a bool
    passes only as a bool), else one ChapterError that says what ``name`` takes."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ChapterError(f"Parameter {name!r}: {fparams.shown(value)} is too large for a float "
                               f"(the largest is about 1.8e308).") from None
    if type(value) is kind:
        return value
    raise ChapterError(f"Parameter {name!r} takes {takes}; got {fparams.shown(raw)}.")


def _coerce(name: str, raw, default):
    """A parameter's value (``raw``: a command-line string, or a Python value) of exactly the type
    of its default, or one clear error naming the parameter.

    A string is read as a Python literal, except by a string parameter, which takes it as it is,
    and a boolean one, which also takes true/false/yes/no/1/0. Types are held exactly, never
    converted by guessing: an integer takes an integer (not ``True``, not ``2000.0``); a float
    takes a float or an integer (converted; one too large for a float is refused); a list takes a
    list or tuple whose items are of its default's item type, so a list of integers takes
    neither ``16.5``, ``True``, ``'16'`` nor a nested list."""
    if isinstance(raw, str) and isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ChapterError(f"Parameter {name!r} takes true or false, got {fparams.shown(raw)}.")
        return lowered in ("true", "1", "yes")
    if not isinstance(raw, str) or isinstance(default, str):
        value = raw
    elif isinstance(default, float) and raw.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        value = float(raw)  # parsed, so that the range check can refuse it as non-finite
    else:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = raw
    if default is None:
        return value
    if isinstance(default, (list, tuple)):
        kind = _item_type(list(default))
        takes = f"a list of {_TAKES_ITEMS.get(kind, 'values')} like {fparams.shown(default)}"
        if not isinstance(value, (list, tuple)):
            raise ChapterError(f"Parameter {name!r} takes {takes}; got {fparams.shown(raw)}.")
        if kind is None:  # a default of mixed items, or none: any flat list
            if any(isinstance(item, (list, tuple, dict, set)) for item in value):
                raise ChapterError(f"Parameter {name!r} takes a flat list like {fparams.shown(default)}; "
                                   f"got {fparams.shown(raw)}.")
            return type(default)(value)
        return type(default)(_exactly(name, item, kind, raw, takes) for item in value)
    if type(default) in _TAKES:
        return _exactly(name, value, type(default), raw, f"{_TAKES[type(default)]} like {fparams.shown(default)}")
    if not isinstance(value, type(default)):
        raise ChapterError(f"Parameter {name!r} takes a {type(default).__name__} like {fparams.shown(default)}, "
                           f"got {fparams.shown(raw)}.")
    return value


def validate(chapter: str, overrides: dict) -> dict:
    """The full parameter set (defaults updated by ``overrides``), or one clear error: a name that
    is no parameter, a value of another type than its default, a value outside its range, or a
    combination that breaks one of the chapter's constraints (all in ``chapters.yml``). Nothing
    here starts a kernel. ``out_dir`` is the runner's, not a reader's: the folder is ``--out``."""
    defaults = parameters(chapter_path(chapter))
    if "out_dir" in overrides:
        raise ChapterError("out_dir is where the runner puts a run's files, not a parameter: "
                           "give the folder with --out.")
    offered = {k: v for k, v in defaults.items() if k != "out_dir"}
    unknown = sorted(set(overrides) - set(offered))
    if unknown:
        listing = "\n".join(f"  {k} = {fparams.shown(v)}" for k, v in offered.items())
        raise ChapterError(f"Unknown parameter(s) {', '.join(fparams.shown(k) for k in unknown)} for chapter "
                           f"{chapter!r}. Valid parameters and their defaults:\n{listing}")
    params = dict(defaults)
    for name, raw in overrides.items():
        params[name] = _coerce(name, raw, defaults[name])
    entry = manifest()[chapter]
    for name, value in params.items():
        if name in entry.ranges:
            try:
                fparams.check(name, value, entry.ranges[name])
            except fparams.RangeError as exc:
                raise ChapterError(f"{exc} (chapter {chapter!r}; the ranges are in {MANIFEST.name})") from None
    try:
        fparams.check_constraints(entry.constraints, {k: v for k, v in params.items() if k != "out_dir"})
    except fparams.ConstraintError as exc:
        raise ChapterError(f"{exc} (chapter {chapter!r}; the constraints are in {MANIFEST.name})") from None
    return params


def parse_params(text: str) -> dict[str, str]:
    """``key=value`` pairs from one string, as ``make chapter PARAMS="..."`` passes them.

    Items are split on whitespace outside brackets and quotes, so ``widths=[8, 8] lr=0.1`` is two
    items. Quotes outside brackets group and are removed, as in a shell (``label="a b"``); inside
    brackets they are kept, for the value is a Python literal (``names=["a b", "c"]``). Values stay
    strings: :func:`validate` converts them to the parameters' types."""
    items, word, quote, depth, started = [], [], None, 0, False
    for char in text:
        if quote:
            if char == quote:
                quote = None
                if depth:
                    word.append(char)
            else:
                word.append(char)
        elif char in "'\"":
            quote, started = char, True
            if depth:
                word.append(char)
        elif char.isspace() and not depth:
            if started:
                items.append("".join(word))
            word, started = [], False
        else:
            if char in "[({":
                depth += 1
            elif char in "])}":
                depth -= 1
                if depth < 0:
                    raise ChapterError(f"Parameters {text!r}: {char!r} closes an unopened bracket.")
            word.append(char)
            started = True
    if quote:
        raise ChapterError(f"Parameters {text!r}: unclosed quote {quote}.")
    if depth:
        raise ChapterError(f"Parameters {text!r}: unclosed bracket.")
    if started:
        items.append("".join(word))
    found = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.isidentifier():
            raise ChapterError(f"Parameters {text!r}: {item!r} is not key=value (write widths=[8, 8], "
                               f"label=\"a b\").")
        if key in found:
            raise ChapterError(f"Parameters {text!r}: {key!r} is given twice.")
        found[key] = value
    return found


def default_out_dir(chapter: str, overrides: dict) -> Path:
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return RUNS / f"{chapter}-{digest}"


def out_dir_of(chapter: str, overrides: dict, out: str | os.PathLike | None = None) -> Path:
    """The folder a run of ``chapter`` with ``overrides`` writes: ``out`` when given, else
    ``runs/<chapter>-<hash of the validated overrides>``, as :func:`run` chooses it."""
    if out is not None:
        return Path(out).resolve()
    params = validate(chapter, overrides)
    return default_out_dir(chapter, {k: params[k] for k in overrides}).resolve()


def run(chapter: str, overrides: dict | None = None, out: str | os.PathLike | None = None,
        progress: bool = True, resume: str | None = None, force_publish: bool = False) -> dict:
    """Execute ``chapter`` with ``overrides`` into ``out``; return its summary.

    ``resume`` is the command that, run again, picks up after an interruption; by default the
    ``python -m flatlib run`` command for these arguments. The output folder is checked before
    any work (:func:`output_folder`); ``force_publish`` lets a run replace its chapter's
    published run at other parameters."""
    overrides = dict(overrides or {})
    params = validate(chapter, overrides)
    source = chapter_path(chapter)
    out_dir = output_folder(chapter, params, out, overrides, force_publish)
    scratch = out_dir.parent / f".{out_dir.name}.partial"
    failed = out_dir.parent / f"{out_dir.name}.failed"
    kernels = []
    with _exclusive(chapter, out_dir), _stopped_by_ctrl_c(kernels):
        if scratch.exists():  # we hold the lock, so no run is using it
            print(f"Removing a leftover from an interrupted run: {scratch}", file=sys.stderr)
            shutil.rmtree(scratch)
        scratch.mkdir()
        if "out_dir" in params:
            params["out_dir"] = "."  # the kernel runs in the scratch folder, which becomes ``out``
        executed = scratch / f"{chapter}.ipynb"
        before = _code_on_disk()
        start = time.perf_counter()
        try:
            _execute(source, executed, params, progress, kernels)
        except KeyboardInterrupt as stop:
            _keep_failed(scratch, failed)
            if resume is None:
                resume = _run_command(chapter, overrides, out_dir if out is not None else None) \
                    + (" --force-publish" if force_publish else "")
            how = "was stopped (SIGTERM)" if getattr(stop, "signum", None) == signal.SIGTERM else "was interrupted"
            print(f"Chapter {chapter!r} {how}; its notebook so far is in {failed}.\n"
                  f"Everything already trained and measured is kept in the store ({_store_dir()}), "
                  f"so re-running the same command resumes from there:\n  {resume}", file=sys.stderr)
            raise
        except BaseException:
            _keep_failed(scratch, failed)
            print(f"Chapter {chapter!r} failed; its executed notebook is in {failed}", file=sys.stderr)
            raise
        wall = time.perf_counter() - start
        summary_path = scratch / report.SUMMARY_NAME
        if not summary_path.is_file():
            _keep_failed(scratch, failed)
            raise ChapterError(f"Chapter {chapter!r} ran but wrote no {report.SUMMARY_NAME} into out_dir; "
                               f"see {failed}.")
        edited = sorted(name for name, version in json.loads(summary_path.read_text()).get("code_versions", {}).items()
                        if before.get(name) != version)
        if edited:
            _keep_failed(scratch, failed)
            raise ChapterError(f"Chapter {chapter!r}: flatlib changed on disk while it ran ({', '.join(edited)}), "
                               "so its numbers may come from either version and it is not published; re-run it "
                               f"(see {failed}).")
        recorded = {k: v for k, v in params.items() if k != "out_dir"}
        summary = report.add_provenance(summary_path, recorded, wall, notebook=executed.name)
        tidy(executed, source, out_dir / executed.name, {k: params[k] for k in overrides}, summary,
             _run_command(chapter, overrides, None if out_dir.is_relative_to(report.ROOT / "book") else out_dir))
        summary = report.seal(summary_path)
        out_dir.mkdir(exist_ok=True)
        for item in scratch.iterdir():
            target = out_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        scratch.rmdir()
        shutil.rmtree(failed, ignore_errors=True)
    return summary


def output_folder(chapter: str, params: dict, out: str | os.PathLike | None, overrides: dict,
                  force_publish: bool = False) -> Path:
    """Where a run of ``chapter`` at ``params`` writes (``out``, or ``runs/<chapter>-<hash>/``),
    resolved, or one ChapterError before any work: ``out`` empty, or a file; a folder another
    chapter publishes to, or that holds another chapter's ``summary.json``; the chapter's own
    published folder at parameters other than its published ones (the page would show numbers
    ``make reproduce`` does not give), unless ``force_publish``; a folder that cannot be written
    (tried by creating it and a file in it, so it holds for root too)."""
    if out is not None and not str(out).strip():
        raise ChapterError("--out is empty: give a folder, or leave --out out to write into runs/.")
    out_dir = Path(out) if out is not None else default_out_dir(chapter, {k: params[k] for k in overrides})
    out_dir = out_dir.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise ChapterError(f"--out {out_dir} is a file, not a folder: give a folder (it is created if missing).")
    for run in published():
        if run.out_dir.resolve() != out_dir:
            continue
        if run.chapter != chapter:
            raise ChapterError(f"{out_dir} is where chapter {run.chapter!r} is published; chapter {chapter!r} "
                               "cannot be written there. Give another folder with --out, or leave it out.")
        wanted = {k: v for k, v in validate(chapter, run.params).items() if k != "out_dir"}
        differ = [k for k, v in wanted.items() if params[k] != v]
        if differ and not force_publish:
            listed = ", ".join(f"{k} = {fparams.shown(params[k])} (published: {fparams.shown(wanted[k])})"
                               for k in differ)
            raise ChapterError(f"{out_dir} holds the published run of chapter {chapter!r}, and this run's "
                               f"parameters differ from it: {listed}. Leave --out out to write into runs/, or "
                               "give --force-publish to replace the published run with this one.")
    summary = out_dir / report.SUMMARY_NAME
    if summary.is_file():
        try:
            other = json.loads(summary.read_text()).get("chapter")
        except (OSError, ValueError, AttributeError):
            other = None
        if other is not None and other != chapter:
            raise ChapterError(f"{out_dir} holds a run of chapter {other!r}; a run of {chapter!r} there would mix "
                               "the two. Give another folder with --out.")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        for folder in (out_dir.parent, out_dir) if out_dir.is_dir() else (out_dir.parent,):
            with tempfile.TemporaryFile(dir=folder):
                pass
    except OSError as exc:
        raise ChapterError(f"--out {out_dir}: cannot write there ({exc.strerror or exc}); give a folder you can "
                           "write to.") from None
    return out_dir


def _code_on_disk() -> dict[str, str]:
    """The code version of every flatlib module as the files on disk are now (read afresh, not
    this process's memoised versions), keyed as ``report.code_versions`` keys them: the runner
    takes it before a kernel starts, and a summary whose recorded versions differ was written
    by a kernel that may have run code edited half-way."""
    from flatlib.infrastructure.provenance import code_version, public_modules

    return {name: code_version(name, report.ROOT) for name in public_modules(report.ROOT)}


def _execute(source: Path, executed: Path, params: dict, progress: bool, kernels: list) -> None:
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


def _keep_failed(scratch: Path, failed: Path) -> None:
    shutil.rmtree(failed, ignore_errors=True)
    scratch.rename(failed)


@contextmanager
def _exclusive(chapter: str, out_dir: Path):
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
def _stopped_by_ctrl_c(kernels: list):
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


def _run_command(chapter: str, overrides: dict, out_dir: Path | None) -> str:
    """The ``python -m flatlib run`` command for these arguments."""
    words = ["python", "-m", "flatlib", "run", chapter]
    for key, value in overrides.items():
        words += ["-p", key, value if isinstance(value, str) else repr(value)]
    if out_dir is not None:
        words += ["--out", str(out_dir)]
    return shlex.join(words)


def _store_dir() -> str:
    from flatlib.infrastructure import store

    return store.location()


def tidy(notebook: Path, source: Path, final: Path, overrides: dict | None = None, summary: dict | None = None,
         rerun: str | None = None) -> None:
    """Make the executed notebook a stable document: name the source and the final location
    (relative to the repository when inside it) instead of the scratch folder; drop per-cell
    timings and give cells ids from their position, so a re-run with unchanged numbers changes
    no line; on the site, fold every code cell behind a toggle (its outputs stay) and show the
    parameters once, as a table of the values this run used. A run with ``overrides`` (the
    Fashion-MNIST page of a chapter published twice) names them in its title, so that its page
    and its entry in search differ from the default run's. With ``summary``, the page ends with
    its provenance (``_provenance``) and links to download the files beside it."""
    def shown(path: Path) -> str:
        return os.path.relpath(path, report.ROOT) if path.is_relative_to(report.ROOT) else str(path)

    nb = nbformat.read(notebook, as_version=4)
    meta = nb.metadata.setdefault("papermill", {})
    meta.update(input_path=shown(source), output_path=shown(final))
    for key in ("start_time", "end_time", "duration"):
        meta.pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nb.cells = [c for c in nb.cells if "parameters-table" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = list(cell.metadata.get("tags", []))
        if {"parameters", "injected-parameters"} & set(tags):
            tags = [*dict.fromkeys([*tags, "remove-cell"])]  # shown once, as the table below
        elif not {"remove-cell", "remove-input", "hide-input"} & set(tags):
            tags.append("hide-input")  # code folded behind a toggle; its outputs are the page
        cell.metadata["tags"] = tags
    used = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])] or \
        [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if used:
        at = nb.cells.index(used[-1]) + 1
        nb.cells.insert(at, nbformat.v4.new_markdown_cell(_parameters_table(used[-1].source),
                                                          metadata={"tags": ["parameters-table"]}))
    nb.cells = [c for c in nb.cells if "provenance" not in c.metadata.get("tags", [])]
    if summary is not None:
        files = sorted(p.name for p in notebook.parent.iterdir()
                       if p.suffix in (".csv", ".json") and p.is_file())
        nb.cells.append(nbformat.v4.new_markdown_cell(_provenance(summary, files, rerun),
                                                      metadata={"tags": ["provenance"]}))
    if overrides:
        _suffix_labels(nb, overrides)
        suffix = " (" + ", ".join(f"{k} = {v}" for k, v in overrides.items()) + ")"
        for cell in nb.cells:
            if cell.cell_type == "markdown" and cell.source.startswith("# "):
                title, _, rest = cell.source.partition("\n")
                if not title.endswith(suffix):
                    cell.source = title + suffix + ("\n" + rest if rest else "")
                break
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
    nbformat.write(nb, notebook)


def _suffix_labels(nb, overrides: dict) -> None:
    """Give every label a page defines (``:name:`` of a figure or table) a suffix from
    ``overrides``, and every reference to it on the page the same, so that a chapter published
    twice (once per dataset) defines each label once in the book."""
    suffix = "-" + re.sub(r"[^a-z0-9]+", "-", "-".join(str(v) for v in overrides.values()).lower()).strip("-")
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    names = {m for c in markdown for m in re.findall(r"^:name:\s*(\S+)\s*$", c.source, flags=re.M)}
    names = {n for n in names if not n.endswith(suffix)}
    if not names:
        return
    alternatives = "|".join(map(re.escape, names))
    pattern = re.compile(r"(^:name:\s*|\{(?:numref|ref)\}`(?:[^`<]*<)?)(" + alternatives + r")(?=\s*$|>?`)", flags=re.M)
    for cell in markdown:
        cell.source = pattern.sub(lambda m: m.group(1) + m.group(2) + suffix, cell.source)


def _provenance(summary: dict, files: list[str], rerun: str | None) -> str:
    """The provenance of a run, from its summary, as Markdown: when and where it ran, the code
    and libraries, the data, the command that re-runs it, and the files to download. The commit is
    written ``{commit}`<sha>```, which the site links to the repository when it knows one."""
    commit = summary.get("git_commit")
    data = "; ".join(f"{name}: " + ", ".join(f"`{f}` {h[:12]}" for f, h in files_.items())
                     for name, files_ in summary.get("data_checksums", {}).items()) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items())
    # the wall time stays in summary.json: on the page it would change a re-run's notebook
    rows = [("run", f"{summary.get('run_date', 'unknown')} (UTC); its wall time is in `summary.json`"),
            ("device", summary.get("device", "unknown")),
            ("code", (f"git {{commit}}`{commit}`" if commit else "git commit unknown")
             + f", flatlib {summary.get('flatlib_version', '?')} "
               f"(source hash `{summary.get('flatlib_source_hash', '?')}`)"),
            ("libraries", versions or f"torch {summary.get('torch_version', '?')}"),
            ("data (SHA-256)", data)]
    if rerun:
        rows.append(("re-run", f"`{rerun}`"))
    listed = "\n".join(f"- **{k}**: {v}" for k, v in rows)
    downloads = ", ".join(f"{{download}}`{name} <{name}>`" for name in files)
    return f"## Provenance\n\n{listed}\n\n" + (f"Downloads: {downloads}." if downloads else "")


def _parameters_table(source: str) -> str:
    """The assignments of a parameters cell as a Markdown table, for the page."""
    rows = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id != "out_dir":  # where the runner put the files, not a parameter
            value = ast.get_source_segment(source, node.value).replace("|", "\\|")
            rows.append(f"| `{node.targets[0].id}` | `{value}` |")
    return "**Parameters of this run**\n\n| parameter | value |\n|---|---|\n" + "\n".join(rows)


def staleness(summary: dict) -> str | None:
    """Why the numbers of a run with this ``summary`` no longer match the code, or None when they
    do: a version of a computation it used has changed since (``flatlib.keys``: its modules' own
    versions, its measures', certificate kinds' and verdict rules'), or it was run before results
    were versioned. A refactor changes no version, so it makes nothing stale."""
    # the homes of the measure, certificate and rule versions register them with ``keys``
    from flatlib.experiments import certificates  # noqa: F401
    from flatlib.infrastructure import keys

    recorded = summary.get("computations")
    if not recorded:
        return "run before results were versioned (its summary records no versions of its computations)"
    changed = []
    for name, version in recorded.items():
        now = keys.current(name)
        if now is None:
            changed.append(f"{name} no longer exists")
        elif now != version:
            changed.append(f"{name} {version} -> {now}")
    return "versions changed since the run: " + ", ".join(changed) if changed else None


def stale() -> dict[str, str]:
    """The published runs whose numbers no longer match the code: folder -> why
    (``staleness``). Re-run those chapters (``python -m flatlib reproduce`` re-runs exactly
    these)."""
    reasons = {}
    for run in published():
        path = run.out_dir / "summary.json"
        if not path.is_file():
            reasons[run.folder] = "no summary.json: the chapter has not been run"
            continue
        why = staleness(json.loads(path.read_text()))
        if why:
            reasons[run.folder] = why
    return reasons


def edited() -> dict[str, str]:
    """The published runs with a file changed since the run wrote it: folder -> which. A run
    records the SHA-256 of every file it published, and of its summary (``report.seal``), so a
    CSV, a figure, the notebook or a verdict in the summary edited by hand is named here."""
    reasons = {}
    for run in published():
        path = run.out_dir / report.SUMMARY_NAME
        if path.is_file():
            changed = report.unsealed(path)
            if changed:
                reasons[run.folder] = "edited after its run: " + ", ".join(changed)
    return reasons


def other_environments() -> dict[str, str]:
    """The published runs made in another environment class than this machine's
    (``flatlib.keys.environment``): folder -> what differs. Not stale: the same code and versions,
    but a re-run here may differ in the last bits (and a verdict near a threshold may move), and
    its networks are stored under other keys, so a re-run here starts cold."""
    from flatlib.infrastructure import keys

    here = keys.environment()
    found = {}
    for run in published():
        path = run.out_dir / "summary.json"
        if path.is_file():
            recorded = json.loads(path.read_text()).get("environment")
            if recorded and recorded.get("cpu") and recorded != here:
                found[run.folder] = f"run on {recorded}, this machine is {here}"
    return found


def rerun_command(run: PublishedRun) -> str:
    """The command that re-runs a published run in place."""
    return _run_command(run.chapter, run.params, Path("book") / run.folder)


def estimated_minutes(run: PublishedRun) -> float | None:
    """How long a re-run of ``run`` takes from an empty store on this project's 2-core CPU: the
    manifest's ``cold_minutes`` (measured), else the recorded wall time of its last run (a lower
    bound when that run found its networks in the store), else None."""
    if run.cold_minutes is not None:
        return run.cold_minutes
    path = run.out_dir / "summary.json"
    if path.is_file():
        wall = json.loads(path.read_text()).get("wall_time_s")
        return None if wall is None else wall / 60
    return None


def reproduce(progress: bool = True, everything: bool = False, out=sys.stderr) -> list[dict]:
    """Re-run, in place at their published parameters, the published chapters that are stale
    (``stale``), or all of them with ``everything``; say first which are current and what remains,
    with an estimate of the time. Interrupted, the same command resumes: what was trained and
    measured is in the store, and a chapter finished is current and skipped."""
    runs = published()
    todo_reasons = {r.folder: "re-run of every chapter asked for" for r in runs} if everything else \
        {**edited(), **stale()}
    todo = [r for r in runs if r.folder in todo_reasons]
    print(f"{len(runs) - len(todo)} of {len(runs)} published runs are current"
          + (f"; {len(todo)} to re-run:" if todo else "; nothing to re-run."), file=out)
    total, unknown = 0.0, 0
    for r in todo:
        minutes = estimated_minutes(r)
        total += minutes or 0
        unknown += minutes is None
        when = "time unknown" if minutes is None else f"about {minutes:.0f} min"
        print(f"  book/{r.folder} ({when}): {todo_reasons[r.folder]}", file=out)
    if todo:
        print(f"about {total:.0f} min in all from an empty store" + (f", plus {unknown} of unknown length" if unknown
                                                                     else "") + ". Interrupted, run the same "
              "command again: it resumes from the store and skips what is current.", file=out)
    return [run(r.chapter, r.params, r.out_dir, progress, resume="python -m flatlib reproduce") for r in todo]


PAGE = "page"  # the folder inside a run's output where `page` builds it


def page(out_dir: str | os.PathLike) -> Path:
    """Build a viewable web page of the run in ``out_dir`` (its executed notebook, rendered as the
    site renders a chapter, never executed again) and return the page's path.

    The run's folder is the book's source, so its figures and downloads are where the notebook
    names them; the book's configuration lives in ``out_dir/page/`` (a folder, which the run's seal
    does not cover) with a references page, and the HTML in ``out_dir/page/_build/html/``. MathJax
    is the site's own copy (unpacked from npm when missing), so the page renders its mathematics
    offline; citations resolve against ``book/references.bib``. Links to other chapters of the
    book do not resolve: the page stands alone."""
    import yaml

    out_dir = Path(out_dir).resolve()
    summary_path = out_dir / report.SUMMARY_NAME
    if not summary_path.is_file():
        raise ChapterError(f"{out_dir} holds no {report.SUMMARY_NAME}: it is not the output folder of a run.")
    notebook = out_dir / json.loads(summary_path.read_text()).get("notebook", "")
    if notebook.suffix != ".ipynb" or not notebook.is_file():
        raise ChapterError(f"{out_dir} holds no executed notebook named by its {report.SUMMARY_NAME}.")
    book, ext = report.ROOT / "book", str(report.ROOT / "book" / "_ext")
    config = {
        "title": f"A run of {notebook.stem}", "only_build_toc_files": True,
        "exclude_patterns": [f"{PAGE}/_build/**"],
        "execute": {"execute_notebooks": "off"},
        "bibtex_bibfiles": [str(book / "references.bib")],
        "parse": {"myst_enable_extensions": ["dollarmath", "amsmath", "colon_fence", "deflist"]},
        "sphinx": {"config": {"html_extra_path": [str(book / "_extra")], "mathjax_path": "../mathjax/tex-mml-chtml.js",
                              "html_static_path": [str(book / "_static")], "html_css_files": ["flatbook.css"],
                              "html_js_files": ["enlarge.js"], "bibtex_default_style": "flatbook",
                              "flatbook_source_archive": False, "nb_merge_streams": True,
                              "suppress_warnings": ["mystnb.unknown_mime_type"]},
                   "local_extensions": {"mathjax": ext, "bibstyle": ext, "source_archive": ext}},
    }
    folder = out_dir / PAGE
    folder.mkdir(exist_ok=True)
    (folder / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": notebook.stem,
                                                     "chapters": [{"file": f"{PAGE}/references"}]}, sort_keys=False))
    (folder / "references.md").write_text("# References\n\n```{bibliography}\n```\n")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    built = subprocess.run([str(jupyter_book if jupyter_book.exists() else "jupyter-book"), "build", str(out_dir),
                            "--config", str(folder / "_config.yml"), "--toc", str(folder / "_toc.yml"),
                            "--path-output", str(folder)], capture_output=True, text=True, timeout=1800)
    html = folder / "_build" / "html" / f"{notebook.stem}.html"
    if built.returncode != 0 or not html.is_file():
        raise ChapterError(f"Building the page of {out_dir} failed:\n{(built.stdout + built.stderr)[-3000:]}")
    return html
