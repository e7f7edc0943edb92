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
from flatlib import keys
from flatlib._io import atomic_write
from flatlib.claims import RULE_VERSIONS, Verdict

ROOT = Path(__file__).resolve().parent.parent
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
    import sys

    from flatlib._version import code_version
    return {name: code_version(name) for name in sorted(sys.modules)
            if name.startswith("flatlib.") and not name.startswith("flatlib._")}


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


def scoreboard_row(verdict: Verdict, ours: str, stability: dict[str, float] | None = None) -> dict:
    """One row of the introduction's scoreboard: the claim and verdict decided by its rule in
    ``flatlib.claims``, the sub-claims behind it, ``ours``, our figure as the reader sees it, and
    where given the verdict's ``stability`` (``flatlib.claims.stability``: the share of bootstrap
    replicates in which the rule returns each verdict)."""
    if not isinstance(verdict, Verdict):
        raise TypeError("scoreboard_row takes the Verdict a rule in flatlib.claims returned, not a typed verdict")
    keys.note(f"rule:{verdict.claim}", RULE_VERSIONS[verdict.claim])
    row = {"claim": verdict.claim, "ours": ours, "verdict": verdict.verdict, "checks": verdict.describe()}
    if stability is not None:
        from flatlib.claims import VERDICTS

        unknown = sorted(set(stability) - set(VERDICTS))
        total = sum(stability.values())
        if unknown or not math.isclose(total, 1.0, abs_tol=1e-9) or min(stability.values(), default=0) < 0:
            raise ValueError(f"stability must map verdicts {VERDICTS} to shares summing to 1, got {stability!r}")
        row["stability"] = dict(stability)
    return row


def write_summary(out_dir: str | os.PathLike, chapter: str, headline: dict, scoreboard: list[dict] = (),
                  datasets: list[str] = (), device: str = "cpu") -> Path:
    """Write ``out_dir/summary.json`` from a chapter's own numbers (called by the chapter)."""
    import torch

    from flatlib import data as fdata

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
