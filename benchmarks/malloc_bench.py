"""One head-to-head network with and without ``MALLOC_TRIM_THRESHOLD_=65536`` (the value Dask's
nannies give their workers), each in a fresh process, side by side in one run.

Each process trains and measures one untimed network first (first-call costs), then one timed
network (``study_bench.head_to_head_config``, seed 1, the whole registry, one thread, an empty
temporary store), and reports its wall time, user and system CPU time and minor page faults
(``resource.getrusage``). ``--repeats`` pairs are run, alternating the order.

Writes ``benchmarks/results/malloc.json`` with the device, torch version and date. Run with
``make bench`` or ``python -m benchmarks.malloc_bench``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from flatlib import report

RESULTS = Path(__file__).resolve().parent / "results" / "malloc.json"
REPO = Path(__file__).resolve().parent.parent
VARIABLE = "MALLOC_TRIM_THRESHOLD_"
DASK_VALUE = "65536"

ONE_NETWORK = """
import argparse, json, resource, tempfile, time, os
os.environ["FLATLIB_CACHE"] = tempfile.mkdtemp(prefix="malloc-bench-")
from flatlib import study
from flatlib.threads import one_thread
from benchmarks.study_bench import head_to_head_config
args = argparse.Namespace(dataset="mnist", n=1000, widths=[256, 256], lr=1e-3, batch_size=64, max_epochs=150)
with one_thread():
    study.network_table([head_to_head_config(args, 100)], progress=False)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    study.network_table([head_to_head_config(args, 1)], progress=False)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
                  "system_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt}))
"""


def one(with_variable: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    if with_variable:
        env[VARIABLE] = DASK_VALUE
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", ONE_NETWORK], env=env, cwd=REPO, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    runs = {"unset": [], DASK_VALUE: []}
    for i in range(args.repeats):
        for with_variable in ((False, True) if i % 2 == 0 else (True, False)):
            runs[DASK_VALUE if with_variable else "unset"].append(one(with_variable))
            print(json.dumps({VARIABLE: DASK_VALUE if with_variable else None, **runs[DASK_VALUE if with_variable
                                                                                   else "unset"][-1]}), flush=True)
    results = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "git_commit": report.git_commit(),
               "device": report.device_description("cpu"), "variable": VARIABLE, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
