"""Does a run reproduce a published one? Every number of its tables and of its summary's
headline and scoreboard, compared with the published run's.

A chapter's numbers live in the CSVs it writes and in the headline of its ``summary.json``, and
its verdicts in the summary's scoreboard rows; :func:`compare` reads both folders and reports
every difference: a file, a column, a row count or a summary entry present on one side only, and
for each column or entry whose values differ, how many differ, the first, and by how much at
most. Values are equal when both are NaN, when both are the same infinity, when two strings (or
two booleans) are the same, or when two finite numbers are within ``rtol`` of each other
(``|a - b| <= rtol * |b|``; the default 0 asks for equality to the last bit). A summary writes
NaN and both infinities as null, so there they are told apart only from finite numbers.

What a run measures about itself is not a result and is left out: columns and summary keys
that are times (their name ends in ``time_s``) and ``networks_already_in_store`` (what the store
held when the run started). Figures, the executed notebook and the summary's provenance (code
versions, commit, device, run date) are not compared either; the parameters are, since two runs
of different parameters are not expected to agree.

``python -m flatlib compare RUN [--against FOLDER]`` prints the report and exits 1 when the runs
differ; without ``--against`` it finds the published run of the same chapter and parameters.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUMMARY = "summary.json"
# What a run measures about itself, not about the networks: never compared.
UNCOMPARED_KEYS = ("networks_already_in_store",)
UNCOMPARED_SUFFIX = "time_s"


class CompareError(ValueError):
    """A folder that holds no run to compare, or no published run to compare it with."""


def compared(name: str) -> bool:
    """Whether a column or summary key named ``name`` holds a result (times do not)."""
    return not (name.endswith(UNCOMPARED_SUFFIX) or name in UNCOMPARED_KEYS)


@dataclass(frozen=True)
class Difference:
    """One way the run differs: ``where`` (a file, a file's column, or a summary path such as
    ``headline.networks`` or ``scoreboard[0].verdict``) and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class Comparison:
    """The outcome of :func:`compare`: the values compared and every difference found."""

    run: Path
    against: Path
    rtol: float
    values: int = 0
    files: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences

    def __str__(self) -> str:
        tolerance = "to the last bit" if self.rtol == 0 else f"within rtol {self.rtol:g}"
        head = (f"{self.run} against {self.against}: {self.values:,} values in {len(self.files)} tables and "
                f"the summary, compared {tolerance} (times left out)")
        if self.identical:
            return f"{head}\nidentical"
        count = len(self.differences)
        return "\n".join([head, f"{count} difference{'s' if count > 1 else ''}:",
                          *(f"  {d}" for d in self.differences)])


def _read_summary(folder: Path) -> dict:
    path = folder / SUMMARY
    if not path.is_file():
        raise CompareError(f"{folder} holds no {SUMMARY}: name the output folder of a finished chapter run")
    return json.loads(path.read_text())


def published_counterpart(run: Path) -> Path:
    """The folder of the published run of the same chapter with the same parameters as ``run``."""
    from flatlib.publishing import manifest

    summary = _read_summary(run)
    chapter, params = summary.get("chapter"), summary.get("parameters")
    candidates = [p for p in manifest.published() if p.chapter == chapter]
    if not candidates:
        raise CompareError(f"{run} is a run of {chapter!r}, which has no published run")
    for candidate in candidates:
        path = candidate.out_dir / SUMMARY
        if path.is_file() and json.loads(path.read_text()).get("parameters") == params:
            return candidate.out_dir
    folders = ", ".join(f"book/{c.folder}" for c in candidates)
    raise CompareError(f"no published run of {chapter!r} has the parameters of {run} (published: {folders}); "
                       "name the folder to compare with (--against)")


def _equal(a, b, rtol: float) -> np.ndarray:
    """Elementwise equality of two columns: NaN equals NaN, an infinity only the same infinity,
    finite numbers within rtol; booleans equal booleans only, other values by ``==``."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fiu" and b.dtype.kind in "fiu":
        a, b = a.astype(float), b.astype(float)
        both_nan = np.isnan(a) & np.isnan(b)
        with np.errstate(invalid="ignore"):
            close = np.isfinite(a) & np.isfinite(b) & (np.abs(a - b) <= rtol * np.abs(b))
        return both_nan | close | (a == b)  # a == b: equal infinities
    return np.array([_same(x, y) for x, y in zip(a, b)], dtype=bool)


def _same(x, y) -> bool:
    if isinstance(x, (bool, np.bool_)) or isinstance(y, (bool, np.bool_)):
        return isinstance(x, (bool, np.bool_)) and isinstance(y, (bool, np.bool_)) and bool(x) == bool(y)
    return x == y or (_isnan(x) and _isnan(y))


def _isnan(x) -> bool:
    return isinstance(x, (float, np.floating)) and math.isnan(x)


def _show(value) -> str:
    """A cell as the CSV would read it (numpy scalars as Python numbers)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _gap(a, b, differ: np.ndarray) -> str:
    """The largest absolute and relative difference over the rows that differ and are finite
    on both sides, as text ("" where there are none: NaN, infinities or text)."""
    if a.dtype.kind not in "fiu" or b.dtype.kind not in "fiu":
        return ""
    a, b = a.astype(float), b.astype(float)
    rows = differ & np.isfinite(a) & np.isfinite(b)
    if not rows.any():
        return ""
    diff, scale = np.abs(a[rows] - b[rows]), np.abs(b[rows])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(scale > 0, diff / scale, np.inf)
    return f"; largest difference {diff.max():.3g} (relative {rel.max():.3g})"


def _compare_table(name: str, run: Path, against: Path, result: Comparison) -> None:
    import pandas as pd

    # pandas 3 reads floats exactly (round trip) by default, so two different numbers stay different
    mine, theirs = pd.read_csv(run / name), pd.read_csv(against / name)
    if list(mine.columns) != list(theirs.columns):
        only_run = [c for c in mine.columns if c not in theirs.columns]
        only_against = [c for c in theirs.columns if c not in mine.columns]
        result.differences.append(Difference(name, f"other columns (only in the run: {only_run}; only in the "
                                                   f"other folder: {only_against})" if only_run or only_against
                                             else "the same columns in another order"))
    if len(mine) != len(theirs):
        result.differences.append(Difference(name, f"{len(mine)} rows against {len(theirs)}"))
        return
    for column in (c for c in mine.columns if c in theirs.columns and compared(c)):
        equal = _equal(mine[column].to_numpy(), theirs[column].to_numpy(), result.rtol)
        result.values += len(equal)
        if not equal.all():
            first = int(np.flatnonzero(~equal)[0])
            result.differences.append(Difference(
                f"{name}[{column}]",
                f"{int((~equal).sum())} of {len(equal)} rows differ (first: row {first}, "
                f"{_show(mine[column].iloc[first])} against {_show(theirs[column].iloc[first])})"
                + _gap(mine[column].to_numpy(), theirs[column].to_numpy(), ~equal)))


def _flatten(value, path: str = "") -> dict[str, object]:
    """A nested summary entry as path -> leaf, leaving out the keys that are not results."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if compared(str(key)):
                out.update(_flatten(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{path}[{i}]"))
        return out
    return {path: value}


def _leaf_equal(a, b, rtol: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_leaf_equal(x, y, rtol) for x, y in zip(a, b))
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
        return bool(_equal([a], [b], rtol)[0])
    # a summary writes NaN and both infinities as null (report._jsonable): None == None covers them
    return _same(a, b)


def compare(run: str | Path, against: str | Path | None = None, rtol: float = 0.0) -> Comparison:
    """Compare the chapter run in folder ``run`` with the one in ``against`` (default: the
    published run of the same chapter and parameters, :func:`published_counterpart`)."""
    if not (rtol >= 0 and math.isfinite(rtol)):
        raise CompareError(f"rtol must be a finite number >= 0, not {rtol!r}")
    run = Path(run)
    against = published_counterpart(run) if against is None else Path(against)
    if run.resolve() == against.resolve():
        raise CompareError(f"{run} is the folder it would be compared with: a run in place (make reproduce) "
                           "replaces the published run, so compare a copy of it, or compare with the published "
                           "folder of an earlier checkout (--against)")
    mine, theirs = _read_summary(run), _read_summary(against)
    result = Comparison(run, against, rtol)
    if mine.get("chapter") != theirs.get("chapter"):
        result.differences.append(Difference(SUMMARY, f"a run of {mine.get('chapter')!r} against one of "
                                                      f"{theirs.get('chapter')!r}"))
    if mine.get("parameters") != theirs.get("parameters"):
        changed = sorted(k for k in set(mine.get("parameters") or {}) | set(theirs.get("parameters") or {})
                         if (mine.get("parameters") or {}).get(k) != (theirs.get("parameters") or {}).get(k))
        result.differences.append(Difference("parameters", f"differ in {', '.join(changed)}"))
    tables = sorted({p.name for p in run.glob("*.csv")} | {p.name for p in against.glob("*.csv")})
    for name in tables:
        if not (run / name).is_file() or not (against / name).is_file():
            side = "the run" if (run / name).is_file() else "the other folder"
            result.differences.append(Difference(name, f"only in {side}"))
            continue
        result.files.append(name)
        _compare_table(name, run, against, result)
    mine_head, theirs_head = (_flatten({"headline": s.get("headline", {}), "scoreboard": s.get("scoreboard", [])})
                              for s in (mine, theirs))
    for path in sorted(set(mine_head) | set(theirs_head)):
        where = path
        if path not in mine_head or path not in theirs_head:
            result.differences.append(Difference(where, "only in " + ("the run" if path in mine_head
                                                                      else "the other folder")))
            continue
        result.values += 1
        if not _leaf_equal(mine_head[path], theirs_head[path], result.rtol):
            result.differences.append(Difference(where, f"{mine_head[path]!r} against {theirs_head[path]!r}"))
    return result
