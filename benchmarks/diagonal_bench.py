"""The exact Hessian diagonal: ``flatlib.hessian.diagonal`` and ``flatlib.ensemble.hessian_diagonals``
(for one member) against BackPACK's ``DiagHessian`` (Dangel, Kunstner & Hennig 2020), side by side
in one process, on every device present.

Setup (the issue's): a 784-512-512-10 ReLU MLP after one epoch of SGD on 5,000 MNIST images
(``hessian_bench.setup``), the Hessian of the mean cross-entropy over 1,000 other training images,
float32. Each method runs ``--repeats`` times after one untimed call; medians are reported, with
the largest relative difference between each flatlib diagonal and BackPACK's (over entries above 1e-6 of the
largest, where float32 rounding is not the whole of the value). ``--threads`` sets torch's
intra-op threads on CPU (default: torch's own choice).

Writes ``benchmarks/results/diagonal.json`` with the device, torch version and date. Run with
``make bench`` or ``python -m benchmarks.diagonal_bench``.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from benchmarks.hessian_bench import setup
from flatlib import ensemble, hessian, report

RESULTS = Path(__file__).resolve().parent / "results" / "diagonal.json"


def backpack_diagonal(model, x, y) -> torch.Tensor:
    """BackPACK's exact Hessian diagonal of the mean cross-entropy, flattened in parameter order."""
    from backpack import backpack, extend
    from backpack.extensions import DiagHessian

    model = extend(copy.deepcopy(model))
    loss = extend(nn.CrossEntropyLoss())(model(x), y)
    with backpack(DiagHessian()):
        loss.backward()
    return torch.cat([p.diag_h.detach().reshape(-1) for p in model.parameters()])


def one_member_diagonal(model, data) -> torch.Tensor:
    return ensemble.hessian_diagonals([model], data)[0]


def relative_difference(diag, reference) -> float:
    """The largest relative difference over entries above 1e-6 of the reference's largest."""
    big = reference.abs() > 1e-6 * reference.abs().max()
    return ((diag - reference).abs()[big] / reference.abs()[big]).max().item()


def _timed(fn, repeats, device):
    fn()  # first-call costs out of the timing
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        device = torch.device(name)
        model, x, y = setup(device)
        ours_s, ours = _timed(functools.partial(hessian.diagonal, model, (x, y)), args.repeats, device)
        batched_s, batched = _timed(functools.partial(one_member_diagonal, model, (x, y)), args.repeats, device)
        theirs_s, theirs = _timed(functools.partial(backpack_diagonal, model, x, y), args.repeats, device)
        rows.append({"device": report.device_description(name), "threads": torch.get_num_threads(),
                     "flatlib_s": ours_s, "backpack_s": theirs_s, "flatlib_over_backpack": ours_s / theirs_s,
                     "max_relative_difference": relative_difference(ours, theirs), "ensemble_s": batched_s,
                     "ensemble_over_backpack": batched_s / theirs_s,
                     "ensemble_max_relative_difference": relative_difference(batched, theirs),
                     "parameters": ours.numel()})
        print(json.dumps(rows[-1]), flush=True)
    results = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "git_commit": report.git_commit(),
               "setup": {"widths": [512, 512], "images": len(y), "dtype": "float32", "repeats": args.repeats},
               "gpu": "present" if torch.cuda.is_available() else "none on this machine: no GPU rows",
               "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
