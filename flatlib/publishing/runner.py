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

import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from flatlib.publishing import manifest as fmanifest  # RUNS, published() read at call time: tests stand in
from flatlib.publishing import params as fparams
from flatlib.publishing import report
from flatlib.publishing.execution import (  # noqa: F401 (re-exported)
    Stopped,
    exclusive,
    execute,
    keep_failed,
    stopped_by_ctrl_c,
)
from flatlib.publishing.manifest import (  # noqa: F401 (re-exported)
    BOOK,
    MANIFEST,
    RUNS,
    Chapter,
    ChapterError,
    PublishedRun,
    chapter_path,
    chapters,
    coerce,
    manifest,
    parameters,
    parse_params,
    published,
    read_notebook,
    run_command,
    store_dir,
    validate,
)
from flatlib.publishing.notebooks import (  # noqa: F401 (re-exported)
    PAGE,
    page,
    tidy,
)
from flatlib.publishing.staleness import (  # noqa: F401 (re-exported)
    edited,
    estimated_minutes,
    other_environments,
    rerun_command,
    stale,
    staleness,
)


def default_out_dir(chapter: str, overrides: dict) -> Path:
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return fmanifest.RUNS / f"{chapter}-{digest}"


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
    with exclusive(chapter, out_dir), stopped_by_ctrl_c(kernels):
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
            execute(source, executed, params, progress, kernels)
        except KeyboardInterrupt as stop:
            keep_failed(scratch, failed)
            if resume is None:
                resume = run_command(chapter, overrides, out_dir if out is not None else None) \
                    + (" --force-publish" if force_publish else "")
            how = "was stopped (SIGTERM)" if getattr(stop, "signum", None) == signal.SIGTERM else "was interrupted"
            print(f"Chapter {chapter!r} {how}; its notebook so far is in {failed}.\n"
                  f"Everything already trained and measured is kept in the store ({store_dir()}), "
                  f"so re-running the same command resumes from there:\n  {resume}", file=sys.stderr)
            raise
        except BaseException:
            keep_failed(scratch, failed)
            print(f"Chapter {chapter!r} failed; its executed notebook is in {failed}", file=sys.stderr)
            raise
        wall = time.perf_counter() - start
        summary_path = scratch / report.SUMMARY_NAME
        if not summary_path.is_file():
            keep_failed(scratch, failed)
            raise ChapterError(f"Chapter {chapter!r} ran but wrote no {report.SUMMARY_NAME} into out_dir; "
                               f"see {failed}.")
        edited = sorted(name for name, version in json.loads(summary_path.read_text()).get("code_versions", {}).items()
                        if before.get(name) != version)
        if edited:
            keep_failed(scratch, failed)
            raise ChapterError(f"Chapter {chapter!r}: flatlib changed on disk while it ran ({', '.join(edited)}), "
                               "so its numbers may come from either version and it is not published; re-run it "
                               f"(see {failed}).")
        recorded = {k: v for k, v in params.items() if k != "out_dir"}
        summary = report.add_provenance(summary_path, recorded, wall, notebook=executed.name)
        tidy(executed, source, out_dir / executed.name, {k: params[k] for k in overrides}, summary,
             run_command(chapter, overrides, None if out_dir.is_relative_to(report.ROOT / "book") else out_dir))
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
    for run in fmanifest.published():
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


def reproduce(progress: bool = True, everything: bool = False, out=sys.stderr) -> list[dict]:
    """Re-run, in place at their published parameters, the published chapters that are stale
    (``stale``), or all of them with ``everything``; say first which are current and what remains,
    with an estimate of the time. Interrupted, the same command resumes: what was trained and
    measured is in the store, and a chapter finished is current and skipped."""
    runs = fmanifest.published()
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
