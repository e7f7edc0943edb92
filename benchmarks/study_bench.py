"""Where the time of a head-to-head network goes, and how many networks a minute each executor
computes.

Breakdown: ``--networks`` networks at the head-to-head chapter's defaults (MNIST, n = 1,000,
widths [256, 256], Adam lr 1e-3, batch 64, trained until 100 % training accuracy or 150 epochs),
each trained from scratch (``flatlib.train.train``, no store) and measured by ``flatlib.study``'s
own row builder with a ``value`` callback that times each number, so every measure is computed
as ``network_table`` computes it: on one thread, in registry order, with its default options
(the first of the two exact-trace measures pays for the Hessian diagonal both share).
"evaluation" is the four losses and accuracies (a forward pass over the training subset and
over the 10,000 test images). The first network pays the process's first-call costs and is
reported apart; the medians, quartiles and extremes are over the others.

Throughput (``--executors``): ``study.network_table`` over ``--sweep-networks`` fresh networks
of the same config per executor, each into an empty temporary store, timed end to end (worker
start-up included; a Dask cluster's own start-up is reported apart, as for an existing cluster).

Writes ``benchmarks/results/study.json`` with the device, torch version, core count and date.
Run with ``make bench`` or ``python -m benchmarks.study_bench [--networks N] [--n N] ...``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from flatlib import data, executors, measures, report, study
from flatlib import train as ftrain
from flatlib.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results" / "study.json"
EVALUATION = ("train_loss", "train_acc", "test_loss", "test_acc")


def head_to_head_config(args, seed: int) -> TrainConfig:
    return TrainConfig(dataset=args.dataset, n=args.n, widths=tuple(args.widths), optimizer="adam", lr=args.lr,
                       batch_size=args.batch_size, epochs=args.max_epochs, target_train_acc=1.0, seed=seed)


def time_one_network(config: TrainConfig, names: list[str]) -> dict:
    """Wall seconds of training ``config`` and of each number of its ``network_table`` row."""
    start = time.perf_counter()
    result = ftrain.train(config)
    times = {"train": time.perf_counter() - start}

    def timed(name, compute, options):
        start = time.perf_counter()
        value = float(compute())
        times[name] = time.perf_counter() - start
        return value

    train_set = data.load(config.dataset, "train", n=config.n, seed=config.data_seed)
    test_set = data.load(config.dataset, "test")
    ok = result.status == "ok"
    # study.table_row is the row builder network_table and measure_table share: timed through it,
    # each measure runs exactly as a sweep runs it.
    study.table_row(result.model, train_set, test_set, names if ok else [], {}, init=result.initial_state, value=timed)
    parts = {"train": times["train"], "evaluation": sum(times[k] for k in EVALUATION)}
    parts.update({name: times[name] for name in names if name in times})
    return {"seed": config.seed, "status": result.status, "epochs": len(result.history), "seconds": parts,
            "total_s": sum(parts.values())}


def spread(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2], "min": min(values), "max": max(values),
            "networks": len(values)}


def breakdown(args) -> dict:
    names = list(measures.MEASURES)
    networks = []
    for seed in range(args.first_seed, args.first_seed + args.networks):
        networks.append(time_one_network(head_to_head_config(args, seed), names))
        print(json.dumps(networks[-1]), flush=True)
    steady = networks[1:] or networks  # the first network pays the process's first-call costs
    parts = ["train", "evaluation", *names]
    summary = {part: spread([n["seconds"][part] for n in steady if part in n["seconds"]]) for part in parts
               if any(part in n["seconds"] for n in steady)}
    summary["total"] = spread([n["total_s"] for n in steady])
    return {"networks": networks, "first_network_total_s": networks[0]["total_s"],
            "summary_over": "networks after the first" if len(networks) > 1 else "the only network",
            "summary": summary}


def _malloc_trim():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


DASK_NO_TRIM = "dask-no-trim"
TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


@contextlib.contextmanager
def local_dask(name: str):
    """A ``LocalCluster`` of one single-threaded worker process per core, as the client, its
    start-up seconds and the workers' ``MALLOC_TRIM_THRESHOLD_``; closed on exit.

    Dask's nannies set ``MALLOC_TRIM_THRESHOLD_=65536`` for their workers by default, which also
    switches off glibc's adaptive mmap threshold; ``DASK_NO_TRIM`` unsets it. A local cluster's
    nannies run in this process and write the variable into ``os.environ`` (inherited by every
    process started afterwards), so the environment is put back on exit."""
    import dask
    from distributed import Client, LocalCluster

    environ = dict(os.environ)
    trim = {TRIM_KEY: None} if name == DASK_NO_TRIM else {}
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: (os.environ.clear(), os.environ.update(environ)))  # runs last
        start = time.perf_counter()
        with dask.config.set(trim):
            cluster = stack.enter_context(LocalCluster(n_workers=executors.cores(), threads_per_worker=1,
                                                       processes=True, dashboard_address=None))
        client = stack.enter_context(Client(cluster, set_as_default=False))
        start_s = time.perf_counter() - start
        yield client, start_s, sorted({str(v) for v in client.run(_malloc_trim).values()})


def throughput(args, executor_names: list[str]) -> dict:
    seeds = range(args.first_seed, args.first_seed + args.sweep_networks)
    configs = [head_to_head_config(args, seed) for seed in seeds]
    out = {"networks": len(configs), "workers": executors.cores(), "runs": {}}
    store_before = os.environ.get("FLATLIB_CACHE")
    for name in executor_names:
        with tempfile.TemporaryDirectory(prefix="study-bench-") as root, contextlib.ExitStack() as stack:
            os.environ["FLATLIB_CACHE"] = root
            executor, start_s, worker_trim = (None if name == "serial" else name), None, None
            if name in ("dask", DASK_NO_TRIM):
                executor, start_s, worker_trim = stack.enter_context(local_dask(name))
            start = time.perf_counter()
            study.network_table(configs, executor=executor, desc=name)
            seconds = time.perf_counter() - start
        out["runs"][name] = {"seconds": seconds, "networks_per_minute": 60 * len(configs) / seconds,
                             **({"cluster_start_s": start_s} if start_s is not None else {}),
                             **({"workers_MALLOC_TRIM_THRESHOLD_": worker_trim} if worker_trim else {})}
        print(name, json.dumps(out["runs"][name]), flush=True)
    if store_before is None:
        os.environ.pop("FLATLIB_CACHE", None)
    else:
        os.environ["FLATLIB_CACHE"] = store_before
    if "serial" in out["runs"]:
        for run in out["runs"].values():
            run["speedup_over_serial"] = run["networks_per_minute"] / out["runs"]["serial"]["networks_per_minute"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", type=int, default=5, help="networks in the breakdown (default 5)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-epochs", type=int, default=150)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--executors", nargs="*", default=["serial", "processes", "dask", DASK_NO_TRIM],
                        choices=["serial", "processes", "dask", DASK_NO_TRIM],
                        help="executors to time on one sweep each (none: skip)")
    parser.add_argument("--sweep-networks", type=int, default=24, help="networks per timed sweep (default 24)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.networks < 1 or args.sweep_networks < 1:
        parser.error("--networks and --sweep-networks must be at least 1")
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": report.device_description("cpu"), "torch": torch.__version__, "cores": executors.cores(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "git_commit": report.git_commit(),
        "flatlib_source_hash": report.source_hash(),
        "config": {k: v for k, v in head_to_head_config(args, 0).to_dict().items() if k != "seed"},
        "breakdown": breakdown(args),
    }
    if args.executors:
        results["throughput"] = throughput(args, args.executors)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
