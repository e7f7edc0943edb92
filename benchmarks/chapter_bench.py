"""A published chapter re-run from an empty store on each executor, side by side: how long it
takes, and whether every number it publishes equals the published run's.

For each of ``--executors`` the chapter runs as ``python -m flatlib run`` runs it
(``flatlib.runner.run``, its kernel choosing the executor from ``FLATLIB_EXECUTOR``) at the
parameters of the published run in ``book/<--published>``, into a fresh temporary store and
output folder; then ``flatlib.compare`` compares its tables and headline with the published
ones, number for number (times left out). ``dask`` and ``dask-no-trim`` are a local Dask
cluster of one single-threaded worker per core (``study_bench.local_dask``; its start-up is
reported apart, as for a cluster already running), reached by the kernel through its address.

Writes ``benchmarks/results/chapter.json`` with the device, torch version, core count and date.
Run with ``make bench`` or ``python -m benchmarks.chapter_bench [--published FOLDER] [--executors ...]``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.study_bench import DASK_NO_TRIM, local_dask
from flatlib import compare, executors, report, runner

RESULTS = Path(__file__).resolve().parent / "results" / "chapter.json"
EXECUTORS = ["serial", "processes", "dask", DASK_NO_TRIM]


def published_run(folder: str) -> runner.PublishedRun:
    found = {run.folder: run for run in runner.published()}
    if folder not in found:
        raise SystemExit(f"no published run in book/{folder}; published: {', '.join(found)}")
    return found[folder]


@contextlib.contextmanager
def environment(**values):
    """``os.environ`` with ``values`` set (the chapter's kernel inherits it), put back on exit."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_cold(published: runner.PublishedRun, name: str) -> dict:
    """The chapter of ``published`` on executor ``name``, from an empty store, compared."""
    with tempfile.TemporaryDirectory(prefix="chapter-bench-") as root, contextlib.ExitStack() as stack:
        executor, extra = name, {}
        if name in ("dask", DASK_NO_TRIM):
            client, start_s, trim = stack.enter_context(local_dask(name))
            executor = client.scheduler.address
            extra = {"cluster_start_s": start_s, "workers_MALLOC_TRIM_THRESHOLD_": trim}
        out = Path(root) / published.folder
        with environment(FLATLIB_EXECUTOR=executor, FLATLIB_CACHE=str(Path(root) / "store")):
            start = time.perf_counter()
            summary = runner.run(published.chapter, published.params, out=out, progress=False)
            seconds = time.perf_counter() - start
        result = compare.compare(out, published.out_dir)
    headline = summary.get("headline", {})
    row = {"seconds": seconds, "chapter_wall_time_s": summary.get("wall_time_s"),
           "study_wall_time_s": headline.get("study_wall_time_s", headline.get("study_time_s")),
           "networks_already_in_store": headline.get("networks_already_in_store"), **extra,
           "identical_to_published": result.identical, "values_compared": result.values,
           "differences": [str(d) for d in result.differences]}
    print(name, json.dumps({k: v for k, v in row.items() if k != "differences"}), flush=True)
    for difference in result.differences[:10]:
        print("   ", difference, flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--published", default="head_to_head",
                        help="the published run to re-run, by its folder under book/ (default head_to_head)")
    parser.add_argument("--executors", nargs="+", default=["serial", "processes", DASK_NO_TRIM], choices=EXECUTORS,
                        help="executors to run the chapter on, one cold run each")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    published = published_run(args.published)
    stale = runner.stale().get(published.folder)
    if stale:
        raise SystemExit(f"book/{published.folder} is stale ({stale}): its numbers are not this code's to compare")
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": report.device_description("cpu"), "torch": torch.__version__, "cores": executors.cores(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "git_commit": report.git_commit(),
        "flatlib_source_hash": report.source_hash(),
        "chapter": published.chapter, "published": f"book/{published.folder}", "params": published.params,
        "runs": {name: run_cold(published, name) for name in args.executors},
    }
    if "serial" in results["runs"]:
        for row in results["runs"].values():
            row["speedup_over_serial"] = results["runs"]["serial"]["seconds"] / row["seconds"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
