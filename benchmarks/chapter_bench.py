"""A published chapter re-run from an empty store on each executor, side by side: how long it
takes, whether the executors agree number for number, and whether this machine reproduces the
published numbers.

For each of ``--executors`` the chapter runs as ``python -m flatlib run`` runs it
(``flatlib.runner.run``, its kernel choosing the executor from ``FLATLIB_EXECUTOR``) at the
parameters of the published run in ``book/<--published>``, into a fresh temporary store and
output folder; then ``flatlib.compare`` compares its tables and headline, number for number
(times left out), with the first executor's run and with the published run. The first comparison
is the executor's effect; the second also holds the machine's, since training on another CPU
(other vector instructions, so other float rounding) need not give the same bits. ``dask`` and
``dask-no-trim`` are a local Dask cluster of one single-threaded worker per core
(``study_bench.local_dask``; its start-up is reported apart, as for a cluster already running),
reached by the kernel through its address.

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
from flatlib._io import atomic_write

RESULTS = Path(__file__).resolve().parent / "results" / "chapter.json"
EXECUTORS = ["serial", "processes", "dask", DASK_NO_TRIM]


def cpu_model() -> str | None:
    """The CPU's model name (Linux), with the vector instructions torch's kernels use beside it
    in the results: float rounding, and so training, can differ between instruction sets."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


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


def _compared(result: compare.Comparison) -> dict:
    return {"identical": result.identical, "values_compared": result.values,
            "differences": [str(d) for d in result.differences]}


def run_cold(published: runner.PublishedRun, name: str, root: Path) -> tuple[Path, dict]:
    """The chapter of ``published`` on executor ``name`` into ``root/name``, from an empty store."""
    with contextlib.ExitStack() as stack:
        executor, extra = name, {}
        if name in ("dask", DASK_NO_TRIM):
            client, start_s, trim = stack.enter_context(local_dask(name))
            executor = client.scheduler.address
            extra = {"cluster_start_s": start_s, "workers_MALLOC_TRIM_THRESHOLD_": trim}
        out = root / name
        with environment(FLATLIB_EXECUTOR=executor, FLATLIB_CACHE=str(root / f"store-{name}")):
            start = time.perf_counter()
            summary = runner.run(published.chapter, published.params, out=out, progress=False)
            seconds = time.perf_counter() - start
    headline = summary.get("headline", {})
    return out, {"seconds": seconds, "chapter_wall_time_s": summary.get("wall_time_s"),
                 "study_wall_time_s": headline.get("study_wall_time_s", headline.get("study_time_s")),
                 "networks_already_in_store": headline.get("networks_already_in_store"), **extra}


def _report(name: str, row: dict) -> None:
    print(name, json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), flush=True)
    for against in ("published", "first_executor"):
        if against in row:
            print(f"  against the {against.replace('_', ' ')}: "
                  + ("identical" if row[against]["identical"] else f"{len(row[against]['differences'])} differences"),
                  flush=True)
            for difference in row[against]["differences"][:10]:
                print("   ", difference, flush=True)


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
        "device": report.device_description("cpu"), "cpu_model": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "cores": executors.cores(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "git_commit": report.git_commit(), "flatlib_source_hash": report.source_hash(),
        "chapter": published.chapter, "published": f"book/{published.folder}", "params": published.params,
        "published_device": json.loads((published.out_dir / "summary.json").read_text()).get("device"),
        "first_executor": args.executors[0], "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="chapter-bench-") as root:
        folders = {}
        for name in args.executors:
            folders[name], row = run_cold(published, name, Path(root))
            row["published"] = _compared(compare.compare(folders[name], published.out_dir))
            if name != args.executors[0]:
                row["first_executor"] = _compared(compare.compare(folders[name], folders[args.executors[0]]))
            results["runs"][name] = row
            _report(name, row)
            serial = results["runs"].get("serial")
            for each in results["runs"].values():
                if serial:
                    each["speedup_over_serial"] = serial["seconds"] / each["seconds"]
            # written after every run, so a long bench stopped half-way keeps what it measured
            atomic_write(args.out, (json.dumps(results, indent=2) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
