"""A chapter's machine-readable summary: headline numbers, scoreboard rows, provenance.

A chapter calls :func:`write_summary` in its last cell; the chapter runner then adds the
provenance it alone knows (validated parameters, wall time) with :func:`add_provenance`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
from pathlib import Path

import flatlib
from flatlib.infrastructure import keys
from flatlib.infrastructure.output import atomic_write
from flatlib.publishing.claims import RULE_VERSIONS, Verdict

ROOT = Path(__file__).resolve().parents[2]
SUMMARY_NAME = "summary.json"


def source_hash() -> str:
    """SHA-256 over flatlib's own source files, so a summary names the code that made it."""
    digest = hashlib.sha256()
    package = Path(flatlib.__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def code_versions() -> dict[str, str]:
    """The code version (``flatlib._version.code_version``: a module's source and everything it
    imports from flatlib) of every flatlib module this process has loaded: in a chapter's
    kernel, exactly the code its numbers came from. Provenance: staleness is decided by the
    versions of the computations (``flatlib.keys.used``), not by these."""
    from flatlib.infrastructure.provenance import code_version, loaded_modules
    return {name: code_version(name) for name in loaded_modules()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    # Published chapter outputs under book/ change with every run; "-dirty" flags changed code
    # or configuration only (the flatlib source hash pins the library separately).
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)book"],
                           cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def device_description(device: str = "cpu") -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _jsonable(value):
    """Floats that JSON can carry (NaN and inf become None), numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _atomic_write_json(path: Path, payload: dict) -> None:
    atomic_write(path, (json.dumps(_jsonable(payload), indent=2) + "\n").encode())
    # readable as any file the user writes (the temporary file it replaced was private, 0600)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _checked_stability(stability: dict[str, float]) -> dict[str, float]:
    from flatlib.publishing.claims import VERDICTS

    unknown = sorted(set(stability) - set(VERDICTS))
    total = sum(stability.values())
    if unknown or not math.isclose(total, 1.0, abs_tol=1e-9) or min(stability.values(), default=0) < 0:
        raise ValueError(f"stability must map verdicts {VERDICTS} to shares summing to 1, got {stability!r}")
    return dict(stability)


def scoreboard_row(verdict: Verdict, ours: str, stability: dict[str, float] | None = None,
                   geometric: tuple[Verdict, dict | None] | None = None) -> dict:
    """One row of the introduction's scoreboard: the claim and verdict decided by its rule in
    ``flatlib.claims``, the sub-claims behind it, ``ours``, our figure as the reader sees it, and
    where given the verdict's ``stability`` (``flatlib.claims.stability``: the share of bootstrap
    replicates in which the rule returns each verdict). The verdict is the pre-registered
    primary reading of weakness (the literal one); ``geometric`` is (the same rule's verdict with
    the geometric reading in the weakness slot, its stability), shown beside it as a peer."""
    if not isinstance(verdict, Verdict):
        raise TypeError("scoreboard_row takes the Verdict a rule in flatlib.claims returned, not a typed verdict")
    keys.note(f"rule:{verdict.claim}", RULE_VERSIONS[verdict.claim])
    row = {"claim": verdict.claim, "ours": ours, "verdict": verdict.verdict, "checks": verdict.describe()}
    if stability is not None:
        row["stability"] = _checked_stability(stability)
    if geometric is not None:
        other, other_stability = geometric
        if not isinstance(other, Verdict) or other.claim != verdict.claim:
            raise TypeError("geometric takes (the Verdict of the same claim's rule, its stability or None)")
        row["geometric"] = {"verdict": other.verdict, "checks": other.describe()}
        if other_stability is not None:
            row["geometric"]["stability"] = _checked_stability(other_stability)
    return row


def write_summary(out_dir: str | os.PathLike, chapter: str, headline: dict, scoreboard: list[dict] = (),
                  datasets: list[str] = (), device: str = "cpu") -> Path:
    """Write ``out_dir/summary.json`` from a chapter's own numbers (called by the chapter)."""
    import torch

    from flatlib.engine import data as fdata

    payload = {
        "chapter": chapter,
        "headline": headline,
        "scoreboard": list(scoreboard),
        "data_checksums": {name: fdata.checksums(name) for name in datasets},
        "flatlib_version": flatlib.__version__,
        "flatlib_source_hash": source_hash(),
        "computations": keys.used(),
        "environment": keys.environment(device),
        "code_versions": code_versions(),
        "git_commit": git_commit(),
        "device": device_description(device),
        "torch_version": torch.__version__,
    }
    path = Path(out_dir) / SUMMARY_NAME
    _atomic_write_json(path, payload)
    return path


def today() -> str:
    """The date (UTC) a run is recorded under."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


SEAL = "published_sha256"


def _summary_hash(summary: dict) -> str:
    unsealed = {k: v for k, v in summary.items() if k != SEAL}
    return hashlib.sha256(json.dumps(unsealed, sort_keys=True).encode()).hexdigest()


def _published_files(summary: Path) -> list[Path]:
    """The files a run published beside its summary: everything in the folder but the summary and
    the chapter's source (``<chapter>.md``, which is code and lives there too)."""
    return [p for p in sorted(summary.parent.iterdir()) if p.is_file() and p.name != summary.name
            and p.suffix != ".md" and not p.name.startswith(".")]


def seal(path: Path) -> dict:
    """Record in the summary at ``path`` the SHA-256 of every other file of its folder, and of the
    summary itself (without this record), as the run published them (``unsealed`` checks them)."""
    path = Path(path)
    summary = json.loads(path.read_text())
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in _published_files(path)}
    summary[SEAL] = {"files": files, "summary": _summary_hash(summary)}
    _atomic_write_json(path, summary)
    return summary


def unsealed(path: Path) -> list[str]:
    """The files of a sealed run's folder that changed since it was published: edited, missing or
    added (a summary sealed before seals existed gives none)."""
    path = Path(path)
    summary = json.loads(path.read_text())
    record = summary.get(SEAL)
    if not record:
        return []
    changed = [] if record.get("summary") == _summary_hash(summary) else [path.name]
    now = {p.name for p in _published_files(path)}
    for name, digest in sorted(record["files"].items()):
        file = path.parent / name
        if not file.is_file():
            changed.append(f"{name} (missing)")
        elif hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            changed.append(name)
    changed += [f"{name} (added)" for name in sorted(now - set(record["files"]))]
    return changed


def add_provenance(path: Path, parameters: dict, wall_time_s: float, notebook: str) -> dict:
    """Add what only the runner knows to a summary the chapter wrote."""
    import importlib.metadata
    import sys

    summary = json.loads(Path(path).read_text())
    summary["parameters"] = parameters
    summary["wall_time_s"] = round(wall_time_s, 1)
    summary["notebook"] = notebook
    summary["run_date"] = today()
    summary["versions"] = {"python": sys.version.split()[0], **{
        name: importlib.metadata.version(name) for name in ("torch", "numpy", "scipy", "pandas", "papermill")}}
    _atomic_write_json(Path(path), summary)
    return summary


# ----------------------------------------------------------------------------- numbers and tables for people

MINUS = "\u2212"
MISSING = "\u2014"  # an em dash: no value (NaN, None), never "NaN"
_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def number(value, digits: int = 3, signed: bool = False) -> str:
    """A value as a reader should see it: ``digits`` significant figures; from 10^6 up and below
    10^-3 as 3.2×10⁻⁶; whole numbers (ints, and floats that are whole) with thousands separators
    and no decimals; a true minus sign; "+" before positive values when ``signed``; NaN and None
    as an em dash; booleans as yes/no; a dict as "key: value, ..."; a list or tuple comma-separated."""
    import numpy as np
    import pandas as pd

    if value is None or pd.api.types.is_scalar(value) and not isinstance(value, str) and pd.isna(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {number(v, digits)}" for k, v in value.items()) or MISSING
    if isinstance(value, (list, tuple)):
        return ", ".join(number(v, digits) for v in value) or MISSING
    if isinstance(value, (int, np.integer)):
        text = f"{int(value):,}"
    elif isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return MISSING
        if math.isinf(value):
            text = "\u221e" if value > 0 else "-\u221e"
        elif value.is_integer() and abs(value) < 1e6:
            text = f"{int(value):,}"
        else:
            size = abs(value)
            if size >= 1e6 or size < 1e-3:
                mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
                text = f"{mantissa}\u00d710{str(int(exponent)).translate(_SUPERSCRIPT)}"
            else:
                decimals = max(0, digits - 1 - math.floor(math.log10(size)))
                text = f"{value:,.{decimals}f}"
    else:
        return str(value)
    if signed and not text.startswith("-") and text not in ("0", "0.0"):
        text = "+" + text
    return text.replace("-", MINUS, 1) if text.startswith("-") else text


def interval(low, high, digits: int = 3, signed: bool = False) -> str:
    """An interval as "[low, high]", both ends at the decimals of the wider one (so they line up)."""
    import numpy as np

    if any(v is None or isinstance(v, (float, np.floating)) and math.isnan(v) for v in (low, high)):
        return MISSING
    size = max(abs(float(low)), abs(float(high)))
    if size == 0 or size >= 1e6 or size < 1e-3:
        return f"[{number(low, digits, signed)}, {number(high, digits, signed)}]"
    decimals = max(0, digits - 1 - math.floor(math.log10(size)))
    ends = []
    for v in (float(low), float(high)):
        text = f"{v:,.{decimals}f}"
        if signed and v > 0:
            text = "+" + text
        ends.append(text.replace("-", MINUS, 1))
    return f"[{ends[0]}, {ends[1]}]"


def estimate(value, low, high, digits: int = 3) -> str:
    """A value with its interval: "0.912 [0.905, 0.918]"."""
    return f"{number(value, digits)} {interval(low, high, digits)}"


def tally(values) -> str:
    """How often each value occurs, most frequent first: "target loss (97), patience (3)"."""
    import pandas as pd

    counts = pd.Series(list(values)).value_counts()
    return ", ".join(f"{str(k).replace('_', ' ')} ({v})" for k, v in counts.items()) or "none"


def duration(seconds: float) -> str:
    """A wall time for prose: "under a second", "42 s", "3.2 minutes", "2 h 05 min"."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} minutes"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest:02d} min"


class Table:
    """A table formatted for the page (``text/html``): no index column, numbers as :func:`number`
    writes them, a one-line summary above, and the rows folded behind a toggle when there are more
    than the page should show at once. ``frame`` holds the formatted cells (strings)."""

    def __init__(self, frame, summary: str | None, max_rows: int, numeric: set):
        self.frame, self.summary, self.max_rows, self.numeric = frame, summary, max_rows, numeric

    @property
    def folded(self) -> bool:
        return len(self.frame) > self.max_rows

    def _repr_html_(self) -> str:
        import html

        head = "".join(f'<th class="{"num" if c in self.numeric else "text"}">{html.escape(str(c))}</th>'
                       for c in self.frame.columns)
        body = "".join("<tr>" + "".join(f'<td class="{"num" if c in self.numeric else "text"}">{html.escape(v)}</td>'
                                        for c, v in zip(self.frame.columns, row)) + "</tr>"
                       for row in self.frame.itertuples(index=False))
        grid = f'<table class="flatbook-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        summary = f'<p class="table-summary">{html.escape(self.summary)}</p>' if self.summary else ""
        if self.folded:
            grid = (f'<details class="table-toggle"><summary>Show all {len(self.frame)} rows</summary>{grid}'
                    "</details>")
        return f'<div class="flatbook-table-block">{summary}{grid}</div>'

    def __repr__(self) -> str:
        return ((self.summary + "\n") if self.summary else "") + self.frame.to_string(index=False)


def table(frame, *, digits: int = 3, columns: list | None = None, intervals: dict | None = None,
          scale: dict | None = None, units: dict | None = None, rename: dict | None = None, signed=(),
          pvalues=(), resamples: int | None = None, summary: str | None = None, max_rows: int = 12) -> Table:
    """``frame`` as a table for people (:class:`Table`).

    A named index becomes the first column(s); a plain row number is dropped. ``columns`` picks and
    orders the columns (after the index is reset); ``scale`` multiplies columns (100 for a fraction
    shown in percent or percentage points); ``intervals`` maps a new column to its (low, high)
    columns, shown as "[low, high]" where the low one was; ``pvalues`` are formatted as
    ``stats.format_pvalue`` does (with ``resamples``, a Monte Carlo floor as "< 1e-4"; a dict gives
    each p-value column its own number of resamples, None for an asymptotic p-value); ``signed``
    columns show "+" before positive values; ``units`` appends "(unit)" to a column's name and
    ``rename`` renames (both after the rest, by the original name). Every other cell is
    :func:`number` at ``digits`` significant figures. Tables longer than ``max_rows`` fold behind a
    toggle, under ``summary`` (one line; give one for every long table)."""
    import pandas as pd

    from flatlib.engine import stats

    df = frame.copy()
    if isinstance(df.index, pd.RangeIndex) and df.index.name is None:
        df = df.reset_index(drop=True)
    else:
        df = df.reset_index()
    if isinstance(df.columns, pd.MultiIndex):
        df.columns = [" ".join(str(part) for part in c if str(part)) for c in df.columns]
    df.columns = [str(c) for c in df.columns]
    if columns is not None:
        df = df[list(columns) + [c for pair in (intervals or {}).values() for c in pair if c not in columns]]
    for name, factor in (scale or {}).items():
        df[name] = df[name] * factor
    shown = pd.DataFrame(index=df.index)
    numeric = set()
    consumed = {c for pair in (intervals or {}).values() for c in pair}
    starts = {pair[0]: name for name, pair in (intervals or {}).items()}
    for name in df.columns:
        if name in starts:
            low, high = intervals[starts[name]]
            shown[starts[name]] = [interval(a, b, digits, signed=starts[name] in signed or low in signed)
                                   for a, b in zip(df[low], df[high])]
            numeric.add(starts[name])
            continue
        if name in consumed:
            continue
        values = df[name]
        if name in pvalues:
            floor = pvalues[name] if isinstance(pvalues, dict) else resamples
            shown[name] = [stats.format_pvalue(p, floor) if p is not None else MISSING for p in values]
        else:
            shown[name] = [number(v, digits, signed=name in signed) for v in values]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            numeric.add(name)
    renamed = {}
    for name in shown.columns:
        label = (rename or {}).get(name, name)
        if name in (units or {}):
            label = f"{label} ({units[name]})"
        renamed[name] = label
    shown = shown.rename(columns=renamed)
    return Table(shown, summary, max_rows, {renamed[c] for c in numeric})


CORRELATION_NAMES = {"rho": "rho", "partial_rho": "partial rho", "p": "p (asymptotic)", "p_perm": "p (permutation)",
                     "kendall_tau": "Kendall tau", "kendall_p": "p (Kendall)", "n": "networks"}


def correlation_table(frame, resamples: int | None = None, summary: str | None = None, max_rows: int = 12,
                      digits: int = 3, **options) -> Table:
    """Rows of correlations (``flatlib.stats.correlation_table``, ``partial_table``) as a
    :func:`table`: rho signed, its bootstrap interval as one column, asymptotic p-values as they
    are and permutation p-values with their Monte Carlo floor (``resamples``); other keywords go
    to :func:`table`."""
    signed = [c for c in ("rho", "partial_rho", "kendall_tau", "ci_low") if c in frame.columns]
    intervals = {"95% interval": ("ci_low", "ci_high")} if {"ci_low", "ci_high"} <= set(frame.columns) else {}
    pvalues = {c: (resamples if c == "p_perm" else None) for c in ("p", "p_perm", "kendall_p") if c in frame.columns}
    rename = {**CORRELATION_NAMES, **options.pop("rename", {})}
    return table(frame, digits=digits, intervals=intervals, signed=[*signed, *options.pop("signed", ())],
                 pvalues=pvalues, rename=rename, summary=summary, max_rows=max_rows, **options)
