"""Where a cold chapter run's time goes: a published chapter re-run from an empty store, per phase.

The chapter's notebook runs as ``python -m flatlib run`` runs it (its validated parameters, the
kernel choosing the executor from ``FLATLIB_EXECUTOR``, ``processes`` by default), into a fresh
temporary store and folder. The phases come from three records the run leaves, none of them
estimated:

- each cell's wall time (papermill's record in the executed notebook); the run's wall time less
  the cells' is the kernel's start-up and papermill's own work;
- each network's training time (the ``train_time_s`` column of the chapter's networks table);
- each number's compute time (the ``seconds`` that ``study.measure`` stores beside the value).

Training and the measures run in the executor's workers, so their seconds are summed over
workers; divided by the number of workers they are the wall time the networks would take if the
workers were never idle. A chapter's *fixed cost* is the rest: the run's wall time less that share
(kernel start-up, worker start-up, data, reading the store, permutation tests, bootstraps,
figures). The data's load time is measured apart, once, in this process.

Writes ``benchmarks/results/phases.json`` (device, CPU model, date, commit). Run with
``python -m benchmarks.phases_bench [--published head_to_head] [-p networks 8 ...]``.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import nbformat
import pandas as pd
import torch

from benchmarks.chapter_bench import cpu_model, environment, published_run
from flatlib._io import atomic_write
from flatlib.engine import data as fdata
from flatlib.infrastructure import executors, store
from flatlib.publishing import execution, report, runner

RESULTS = Path(__file__).resolve().parent / "results" / "phases.json"


def cell_times(notebook: Path) -> list[dict]:
    """Each code cell's first line of work (imports and comments skipped) and papermill's record
    of its wall time, in order."""
    def label(source: str) -> str:
        lines = [line for line in source.splitlines() if line.strip()]
        work = [line for line in lines if not line.startswith(("import ", "from ", "#"))]
        return (work or lines or [""])[0][:70]

    nb = nbformat.read(notebook, as_version=4)
    return [{"cell": label(cell.source), "seconds": cell.metadata.get("papermill", {}).get("duration") or 0.0}
            for cell in nb.cells if cell.cell_type == "code"]


def measure_seconds(store_root: Path) -> dict[str, dict]:
    """Per number in the store: how many entries, and their compute seconds summed."""
    totals = collections.defaultdict(lambda: {"entries": 0, "seconds": 0.0})
    for path in sorted((store_root / "measures").glob("*.json")):
        with environment(FLATLIB_CACHE=str(store_root)):
            entry = store.get_json(f"measures/{path.name}")
        if entry is None:
            raise SystemExit(f"{path}: not a valid store entry")
        totals[entry["measure"]]["entries"] += 1
        totals[entry["measure"]]["seconds"] += entry.get("seconds", float("nan"))
    return dict(sorted(totals.items(), key=lambda item: -item[1]["seconds"]))


def profile(chapter: str, params: dict, root: Path, executor: str) -> dict:
    """Run ``chapter`` at ``params`` on ``executor`` from an empty store under ``root``; its phases."""
    params = runner.validate(chapter, params)
    params["out_dir"] = "."
    folder = root / "run"
    folder.mkdir()
    executed = folder / f"{chapter}.ipynb"
    data_start = time.perf_counter()
    fdata.load(params.get("dataset", "mnist"), "train", params.get("n"))
    fdata.load(params.get("dataset", "mnist"), "test")
    data_s = time.perf_counter() - data_start
    with environment(FLATLIB_EXECUTOR=executor, FLATLIB_CACHE=str(root / "store")):
        start = time.perf_counter()
        execution.execute(runner.chapter_path(chapter), executed, params, False, [])
        wall = time.perf_counter() - start
    cells = cell_times(executed)
    tables = sorted(folder.glob("*_networks.csv"))
    train = pd.read_csv(tables[0])["train_time_s"] if tables else pd.Series(dtype=float)
    measures = measure_seconds(root / "store")
    workers = 1 if executors.is_serial(executor) else executors.cores()
    in_workers = float(train.sum()) + sum(m["seconds"] for m in measures.values())
    return {"wall_s": wall, "kernel_start_and_papermill_s": wall - sum(c["seconds"] for c in cells),
            "data_load_s": data_s, "cells": cells, "networks": int(len(train)),
            "training": {"networks": int(len(train)), "seconds": float(train.sum()),
                         "mean_per_network_s": float(train.mean()) if len(train) else None},
            "measures": measures, "workers": workers, "network_work_s": in_workers,
            "network_share_of_wall_s": in_workers / workers, "fixed_cost_s": wall - in_workers / workers}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--published", default="head_to_head",
                        help="the published run whose parameters to use, by its folder under book/")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a parameter to change from the published run's (e.g. -p networks 8)")
    parser.add_argument("--executor", default="processes", help="FLATLIB_EXECUTOR for the run (default processes)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    published = published_run(args.published)
    params = {**published.params, **dict(args.p)}  # validate() reads "8" as 8, as `flatlib run -p` does
    with tempfile.TemporaryDirectory(prefix="phases-bench-") as root:
        phases = profile(published.chapter, params, Path(root), args.executor)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": report.device_description("cpu"), "cpu_model": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "cores": executors.cores(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "git_commit": report.git_commit(), "chapter": published.chapter, "params": params,
        "executor": args.executor, **phases}
    atomic_write(args.out, (json.dumps(results, indent=2) + "\n").encode())
    print(f"{published.chapter}, {phases['networks']} networks, {args.executor} on {results['cores']} cores: "
          f"{phases['wall_s']:.1f} s; networks' share {phases['network_share_of_wall_s']:.1f} s, "
          f"fixed cost {phases['fixed_cost_s']:.1f} s")
    print(f"  kernel start-up and papermill {phases['kernel_start_and_papermill_s']:.1f} s; "
          f"data load {phases['data_load_s']:.2f} s; training {phases['training']['seconds']:.1f} s in workers")
    for name, m in phases["measures"].items():
        print(f"  {name}: {m['seconds']:.1f} s over {m['entries']} entries")
    for cell in sorted(phases["cells"], key=lambda c: -c["seconds"])[:8]:
        print(f"  cell {cell['seconds']:7.1f} s  {cell['cell']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
