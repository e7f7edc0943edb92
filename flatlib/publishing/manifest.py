"""The chapter manifest (``chapters.yml``) and a chapter's parameters: every chapter's source and
published runs (``manifest``, ``published``), the defaults its source's ``parameters`` cell
declares, and the validation of the values a run is given (types, ranges, constraints), before
anything runs. Part of ``flatlib.runner``, which re-exports it.
"""
from __future__ import annotations

import ast
import shlex
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


def coerce(name: str, raw, default):
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
        params[name] = coerce(name, raw, defaults[name])
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


def run_command(chapter: str, overrides: dict, out_dir: Path | None) -> str:
    """The ``python -m flatlib run`` command for these arguments."""
    words = ["python", "-m", "flatlib", "run", chapter]
    for key, value in overrides.items():
        words += ["-p", key, value if isinstance(value, str) else repr(value)]
    if out_dir is not None:
        words += ["--out", str(out_dir)]
    return shlex.join(words)


def store_dir() -> str:
    from flatlib.infrastructure import store

    return store.location()
