"""The chapter runner: validated parameters in, executed notebook and summary.json out.

``python -m flatlib run <chapter> [-p key value ...] [--out DIR]`` wraps papermill. A chapter
is the notebook ``book/<chapter>/<chapter>.ipynb``; its cell tagged ``parameters`` holds one
``name = literal`` line per parameter, and those literals are the defaults and the types.
Unknown names and values of the wrong type are rejected before anything executes. The run
happens in a scratch folder beside the output and is moved into place only when it
succeeded, so a failed run never leaves a half-written chapter behind (its executed notebook
is kept in ``<out>.failed/`` for diagnosis).
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from flatlib import report

BOOK = report.ROOT / "book"
RUNS = report.ROOT / "runs"


class ChapterError(ValueError):
    """A chapter name or parameter the runner cannot accept; the message lists what it can."""


@dataclass(frozen=True)
class PublishedRun:
    """A run whose executed notebook is part of the published book."""

    chapter: str
    params: dict = field(default_factory=dict)
    folder: str | None = None  # under book/; defaults to the chapter's own folder

    @property
    def out_dir(self) -> Path:
        return BOOK / (self.folder or self.chapter)


# What `make reproduce` re-runs, in order. A chapter lands here when it is published.
PUBLISHED: list[PublishedRun] = [
    PublishedRun("reparameterisation"),
    PublishedRun("head_to_head"),
    PublishedRun("head_to_head", {"dataset": "fashion_mnist"}, folder="head_to_head_fashion_mnist"),
    PublishedRun("batch_sweep"),
    PublishedRun("pacbayes_link"),
    PublishedRun("pacbayes_link", {"dataset": "fashion_mnist"}, folder="pacbayes_link_fashion_mnist"),
]


def chapters() -> dict[str, Path]:
    """Every chapter source: ``book/<name>/<name>.ipynb``."""
    return {p.parent.name: p for p in sorted(BOOK.glob("*/*.ipynb")) if p.stem == p.parent.name}


def chapter_path(name: str) -> Path:
    found = chapters()
    if name not in found:
        raise ChapterError(f"Unknown chapter {name!r}. Chapters: {', '.join(found) or '(none yet)'}.")
    return found[name]


def parameters(notebook: Path) -> dict:
    """The defaults in the notebook's ``parameters`` cell, as Python values, in order."""
    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ChapterError(f"{notebook} must have exactly one cell tagged 'parameters', found {len(cells)}.")
    defaults = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            defaults[node.targets[0].id] = ast.literal_eval(node.value)
    return defaults


def _coerce(name: str, raw, default):
    """Convert a command-line value to the type of the parameter's default."""
    if not isinstance(raw, str):
        value = raw
    elif isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ChapterError(f"Parameter {name!r} takes true or false, got {raw!r}.")
        return lowered in ("true", "1", "yes")
    elif isinstance(default, str):
        return raw
    else:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
    if default is None:
        return value
    if isinstance(default, bool) != isinstance(value, bool):
        raise ChapterError(f"Parameter {name!r} takes a {type(default).__name__}, got {raw!r}.")
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    if not isinstance(value, type(default)):
        raise ChapterError(f"Parameter {name!r} takes a {type(default).__name__} like {default!r}, got {raw!r}.")
    return value


def validate(chapter: str, overrides: dict) -> dict:
    """The full parameter set (defaults updated by ``overrides``), or one clear error."""
    defaults = parameters(chapter_path(chapter))
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        listing = "\n".join(f"  {k} = {v!r}" for k, v in defaults.items())
        raise ChapterError(f"Unknown parameter(s) {', '.join(map(repr, unknown))} for chapter {chapter!r}. "
                           f"Valid parameters and their defaults:\n{listing}")
    params = dict(defaults)
    for name, raw in overrides.items():
        params[name] = _coerce(name, raw, defaults[name])
    return params


def default_out_dir(chapter: str, overrides: dict) -> Path:
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return RUNS / f"{chapter}-{digest}"


def run(chapter: str, overrides: dict | None = None, out: str | os.PathLike | None = None,
        progress: bool = True) -> dict:
    """Execute ``chapter`` with ``overrides`` into ``out``; return its summary."""
    import papermill

    overrides = dict(overrides or {})
    params = validate(chapter, overrides)
    out_dir = Path(out) if out is not None else default_out_dir(chapter, {k: params[k] for k in overrides})
    out_dir = out_dir.resolve()
    scratch = out_dir.parent / f".{out_dir.name}.partial"
    failed = out_dir.parent / f"{out_dir.name}.failed"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    if "out_dir" in params:
        params["out_dir"] = "."  # the kernel runs in the scratch folder, which becomes ``out``
    executed = scratch / f"{chapter}.ipynb"
    # The kernel must be this interpreter, not whatever `python` is first on PATH.
    env_path = os.environ.get("PATH", "")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env_path
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(chapter_path(chapter)), str(executed), parameters=params,
                                   kernel_name="python3", cwd=str(scratch), progress_bar=progress)
    except BaseException:
        shutil.rmtree(failed, ignore_errors=True)
        scratch.rename(failed)
        print(f"Chapter {chapter!r} failed; its executed notebook is in {failed}", file=sys.stderr)
        raise
    finally:
        os.environ["PATH"] = env_path
    wall = time.perf_counter() - start
    summary_path = scratch / report.SUMMARY_NAME
    if not summary_path.is_file():
        shutil.rmtree(failed, ignore_errors=True)
        scratch.rename(failed)
        raise ChapterError(f"Chapter {chapter!r} ran but wrote no {report.SUMMARY_NAME} into out_dir; see {failed}.")
    recorded = {k: v for k, v in params.items() if k != "out_dir"}
    summary = report.add_provenance(summary_path, recorded, wall, notebook=executed.name)
    _record_paths(executed, chapter_path(chapter), out_dir / executed.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in scratch.iterdir():
        target = out_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    scratch.rmdir()
    shutil.rmtree(failed, ignore_errors=True)
    return summary


def _record_paths(notebook: Path, source: Path, final: Path) -> None:
    """Papermill records where it read and wrote; name the source and the final location
    (relative to the repository when inside it) instead of the scratch folder."""
    def shown(path: Path) -> str:
        return os.path.relpath(path, report.ROOT) if path.is_relative_to(report.ROOT) else str(path)

    nb = nbformat.read(notebook, as_version=4)
    nb.metadata.setdefault("papermill", {}).update(input_path=shown(source), output_path=shown(final))
    nbformat.write(nb, notebook)


def reproduce(progress: bool = True) -> list[dict]:
    """Re-run every published chapter at its published parameters, in place."""
    return [run(r.chapter, r.params, r.out_dir, progress) for r in PUBLISHED]
