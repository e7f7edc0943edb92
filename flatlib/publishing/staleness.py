"""Which published runs no longer match the code (``stale``: a version they used has changed),
were edited after their run (``edited``) or were made in another environment class, how to re-run
one and how long it should take. Part of ``flatlib.runner``, which re-exports it.
"""
from __future__ import annotations

import json
from pathlib import Path

from flatlib.publishing import (
    manifest,  # published() read at call time: a test may stand in for it
    report,
)
from flatlib.publishing.manifest import PublishedRun, run_command


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
    for run in manifest.published():
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
    for run in manifest.published():
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
    for run in manifest.published():
        path = run.out_dir / "summary.json"
        if path.is_file():
            recorded = json.loads(path.read_text()).get("environment")
            if recorded and recorded.get("cpu") and recorded != here:
                found[run.folder] = f"run on {recorded}, this machine is {here}"
    return found


def rerun_command(run: PublishedRun) -> str:
    """The command that re-runs a published run in place."""
    return run_command(run.chapter, run.params, Path("book") / run.folder)


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
