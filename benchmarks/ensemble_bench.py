"""Networks per second: ``--members`` networks that differ only in their seed, trained one after
another by ``flatlib.train.train`` (the loop) and together by ``flatlib.ensemble.train_ensemble``,
side by side in one process, on every device present (CPU, and CUDA when there is one). Each
network trains for exactly ``--epochs`` epochs (no early stop), so both paths do the same work.

Then the trained members' curvature on their training subset, the loop's (``flatlib.hessian.diagonal``
and ``top_eigenvalues`` with k=1, tol 1e-3, member by member, as the study measures them) against
the batched (``flatlib.ensemble.hessian_diagonals`` and ``top_eigenvalues`` on the stacked members),
and 50 weight-noise draws at one noise scale of the PAC-Bayes bounds (``flatlib.pacbayes``' sampler,
member by member, against ``flatlib.ensemble.perturbed_errors``), side by side, both on one thread
on CPU; with the largest relative difference between the two paths' numbers. Every time is a
median of ``--repeats`` runs, the two paths alternated.

Writes ``benchmarks/results/ensemble.json`` with the device, torch version and date. Run with
``make bench`` or ``python -m benchmarks.ensemble_bench [--members M] [--n N] ...``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import statistics
import time
from pathlib import Path

import torch

from flatlib import data as fdata
from flatlib import ensemble, hessian, pacbayes, report
from flatlib import train as ftrain
from flatlib.threads import one_thread

RESULTS = Path(__file__).resolve().parent / "results" / "ensemble.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path, alternated; medians")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        base = ftrain.TrainConfig(dataset="mnist", n=args.n, widths=tuple(args.widths), optimizer="adam", lr=1e-3,
                                  batch_size=args.batch_size, epochs=args.epochs, target_train_acc=None, device=device)
        configs = [dataclasses.replace(base, seed=s) for s in range(args.members)]
        (loop, together), (_, trained) = side_by_side(
            [functools.partial(train_loop, configs), functools.partial(ensemble.train_ensemble, configs)],
            torch.device(device), args.repeats)
        members = [r.model for r in trained]
        rows.append({"device": report.device_description(device), "members": args.members,
                     "loop_networks_per_s": args.members / loop, "ensemble_networks_per_s": args.members / together,
                     "ensemble_vs_loop": loop / together, "measures": measure_rows(members, base, args.repeats)})
        print(json.dumps(rows[-1]), flush=True)
    results = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "git_commit": report.git_commit(),
               "setup": {"n": args.n, "widths": args.widths, "epochs": args.epochs, "batch_size": args.batch_size,
                         "optimizer": "adam", "lr": 1e-3, "repeats": args.repeats},
               "gpu": "present" if torch.cuda.is_available() else "none on this machine: no GPU rows",
               "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def train_loop(configs):
    return [ftrain.train(c) for c in configs]


def side_by_side(fns, device, repeats):
    """Median seconds of each of ``fns`` over ``repeats`` runs, the functions alternated within each
    repeat so that drift in the machine's speed falls on all of them, after one untimed call each;
    and each one's last output."""
    outs = [fn() for fn in fns]  # first-call costs out of the timing
    times = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            outs[k] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], outs


def measure_rows(members, base, repeats) -> list[dict]:
    """The loop against the batched path for the exact diagonal, the top eigenvalue and 50
    PAC-Bayes weight-noise draws."""
    device = torch.device(base.device)
    subset = fdata.load(base.dataset, "train", n=base.n, seed=base.data_seed)
    data = (subset.images.to(device), subset.labels.to(device))
    pairs = {
        "hessian_diagonal": (lambda: torch.stack([hessian.diagonal(m, data) for m in members]),
                             lambda: ensemble.hessian_diagonals(members, data)),
        "top_eigenvalue": (lambda: torch.stack([hessian.top_eigenvalues(m, data, k=1).eigenvalues[0] for m in members]),
                           lambda: torch.stack([r.eigenvalues[0] for r in ensemble.top_eigenvalues(members, data)])),
    }
    st = ensemble.stack(members)
    std = 0.01 * st.flat(st.params()).abs() + 1e-3  # one grid point of pacbayes_mag_bound's magnitude noise
    pairs["pacbayes_draws"] = (
        lambda: torch.stack([pacbayes._Sampler(m, data, 50, seed=0).errors(s) for m, s in zip(members, std)]).double(),
        lambda: ensemble.perturbed_errors(members, data, std, samples=50))
    rows = []
    with one_thread() if device.type == "cpu" else contextlib.nullcontext():
        for name, (loop_fn, batched_fn) in pairs.items():
            (loop_s, batched_s), (loop, batched) = side_by_side([loop_fn, batched_fn], device, repeats)
            difference = ((batched - loop).abs().max() / loop.abs().max()).item()
            rows.append({"measure": name, "loop_networks_per_s": len(members) / loop_s,
                         "batched_networks_per_s": len(members) / batched_s, "batched_vs_loop": loop_s / batched_s,
                         "max_relative_difference": difference})
    return rows


if __name__ == "__main__":
    main()
