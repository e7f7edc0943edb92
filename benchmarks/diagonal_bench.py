"""The exact Hessian diagonal: ``flatlib.hessian.diagonal`` (for this MLP the batched algorithm,
``hessian.mlp_diagonals``) and its per-class path (one backward pass per class, the algorithm it
used for every network until issue 37 and still uses for CNNs) against BackPACK's ``DiagHessian``
(Dangel, Kunstner & Hennig 2020), side by side in one process, on every device present.

Setup (the issue's): a 784-512-512-10 ReLU MLP after one epoch of SGD on 5,000 MNIST images
(``hessian_bench.setup``), the Hessian of the mean cross-entropy over 1,000 other training images,
float32. After one untimed call each, the three run ``--repeats`` times alternated (one of each per
round, so that drift in a shared machine's speed falls on all three); medians are reported, with
the largest relative difference between each flatlib diagonal and BackPACK's (over entries above
1e-6 of the largest, where float32 rounding is not the whole of the value). ``--threads`` sets
torch's intra-op threads on CPU (default: torch's own choice).

Writes ``benchmarks/results/diagonal.json`` with the device, torch version and date. Run with
``make bench`` or ``python -m benchmarks.diagonal_bench``.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
from pathlib import Path

import torch
import torch.nn as nn

from benchmarks.ensemble_bench import side_by_side
from benchmarks.hessian_bench import setup
from flatlib import hessian, report
from flatlib.engine import hessian_diagonal

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


def per_class_diagonal(model, data, batch_size=1000) -> torch.Tensor:
    """``hessian.diagonal``'s per-class path (its CNN path) on any accepted network."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    first = next(model.parameters())
    return hessian_diagonal._diagonal_per_class(model, layers, data[0].to(first.device, first.dtype), batch_size)


def relative_difference(diag, reference) -> float:
    """The largest relative difference over entries above 1e-6 of the reference's largest."""
    big = reference.abs() > 1e-6 * reference.abs().max()
    return ((diag - reference).abs()[big] / reference.abs()[big]).max().item()


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
        (ours_s, old_s, theirs_s), (ours, old, theirs) = side_by_side(
            [functools.partial(hessian.diagonal, model, (x, y)), functools.partial(per_class_diagonal, model, (x, y)),
             functools.partial(backpack_diagonal, model, x, y)], device, args.repeats)
        rows.append({"device": report.device_description(name), "threads": torch.get_num_threads(),
                     "flatlib_s": ours_s, "backpack_s": theirs_s, "flatlib_over_backpack": ours_s / theirs_s,
                     "max_relative_difference": relative_difference(ours, theirs), "per_class_s": old_s,
                     "per_class_over_backpack": old_s / theirs_s,
                     "per_class_max_relative_difference": relative_difference(old, theirs),
                     "parameters": ours.numel()})
        print(json.dumps(rows[-1]), flush=True)
    results = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "git_commit": report.git_commit(),
               "setup": {"widths": [512, 512], "images": len(y), "dtype": "float32", "repeats": args.repeats,
                         "order": "alternated"},
               "gpu": "present" if torch.cuda.is_available() else "none on this machine: no GPU rows",
               "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
