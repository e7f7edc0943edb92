"""The PAC-Bayes measures' Monte Carlo (``flatlib.pacbayes``' sampler), three ways side by side in
one process, on every device present:

* before: the sampler as it was before issue 37, for each sigma the seeded draws made afresh and
  the whole network run at each perturbed weight vector;
* plain forward: each draw made once and evaluated at every sigma, the whole network run each
  time (``_Sampler.errors_at(..., first_layer=False)``, the path a CNN takes);
* first layer split (the default): the same, with an MLP's first layer assembled from per-draw
  products that no sigma changes (``pacbayes._FirstLinear``), so each sigma runs only the later
  layers.

Setup (the head-to-head chapter's): a 784-``--widths``-10 ReLU MLP trained with Adam (lr 1e-3,
batch 64) for ``--epochs`` epochs on ``--n`` MNIST training images, float32, measured on those
images as ``flatlib.study`` measures it: ``pacbayes_bound`` and ``pacbayes_mag_bound`` (7 noise
scales, ``--samples`` draws each) and ``pacbayes_sharpness`` and ``pacbayes_mag_sharpness`` (a
bisection, ``--bisection-samples`` draws per step), on one thread on CPU. After one untimed call
each, the three run ``--repeats`` times alternated (``ensemble_bench.side_by_side``); medians,
and whether the three gave the same number.

Writes ``benchmarks/results/pacbayes.json`` with the device, torch version and date. Run with
``make bench`` or ``python -m benchmarks.pacbayes_bench [--n N] [--widths W W] ...``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
from pathlib import Path
from unittest import mock

import torch

from benchmarks.ensemble_bench import side_by_side
from flatlib import data as fdata
from flatlib import pacbayes, report
from flatlib import train as ftrain
from flatlib.threads import one_thread

RESULTS = Path(__file__).resolve().parent / "results" / "pacbayes.json"
VARIANTS = ("before", "plain forward", "first layer split")


def before_errors_at(sampler, kind, sigmas, eps=1e-3, first_layer=True):
    """The sampler before issue 37: a fresh generator per sigma, one draw at a time, the whole
    network run at each perturbed weight vector (``_Sampler.error_at``)."""
    out = []
    for sigma in sigmas:
        std = pacbayes._posterior_std(kind, sigma, sampler.w, eps).to(sampler.device, sampler.dtype)
        gen = torch.Generator().manual_seed(sampler.seed)
        draws = (torch.randn(sampler.w.numel(), generator=gen, dtype=sampler.dtype).to(sampler.device)
                 for _ in range(sampler.samples))
        out.append(torch.tensor([sampler.error_at(sampler.w_model + std * xi) for xi in draws]))
    return out


@contextlib.contextmanager
def sampler_variant(name: str):
    """The sampler of ``VARIANTS[name]`` in place of ``_Sampler.errors_at`` while inside."""
    if name == "first layer split":
        yield
        return
    plain = functools.partialmethod(pacbayes._Sampler.errors_at, first_layer=False)
    with mock.patch.object(pacbayes._Sampler, "errors_at", before_errors_at if name == "before" else plain):
        yield


def in_variant(name, fn):
    with sampler_variant(name):
        return fn()


def measure_rows(model, data, init, samples, bisection_samples, repeats, device) -> list[dict]:
    calls = {
        "pacbayes_bound": lambda: pacbayes.gaussian_bound(model, data, init, "isotropic", samples=samples).bound,
        "pacbayes_mag_bound": lambda: pacbayes.gaussian_bound(model, data, init, "magnitude", samples=samples).bound,
        "pacbayes_sharpness": lambda: pacbayes.sharpness_sigma(model, data, "isotropic", samples=bisection_samples),
        "pacbayes_mag_sharpness": lambda: pacbayes.sharpness_sigma(model, data, "magnitude",
                                                                   samples=bisection_samples),
    }
    rows = []
    with one_thread() if device.type == "cpu" else contextlib.nullcontext():
        for measure, call in calls.items():
            times, values = side_by_side([functools.partial(in_variant, v, call) for v in VARIANTS], device, repeats)
            row = {"measure": measure, **{f"{v}_s": t for v, t in zip(VARIANTS, times)},
                   "before_vs_split": times[0] / times[2], "plain_vs_split": times[1] / times[2],
                   "identical": len(set(values)) == 1, "value": values[2]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    total = {v: sum(r[f"{v}_s"] for r in rows) for v in VARIANTS}
    rows.append({"measure": "all four", **{f"{v}_s": t for v, t in total.items()},
                 "before_vs_split": total["before"] / total["first layer split"],
                 "plain_vs_split": total["plain forward"] / total["first layer split"],
                 "identical": all(r["identical"] for r in rows)})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=50, help="draws per noise scale of the bounds")
    parser.add_argument("--bisection-samples", type=int, default=10, help="draws per step of the bisections")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant, alternated; medians")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    subset = fdata.load("mnist", "train", n=args.n, seed=0)
    for device in devices:
        config = ftrain.TrainConfig(dataset="mnist", n=args.n, widths=tuple(args.widths), optimizer="adam", lr=1e-3,
                                    batch_size=64, epochs=args.epochs, target_train_acc=None, device=device)
        result = ftrain.train(config)
        data = (subset.images.to(device), subset.labels.to(device))
        rows.append({"device": report.device_description(device),
                     "measures": measure_rows(result.model, data, result.initial_state, args.samples,
                                              args.bisection_samples, args.repeats, torch.device(device))})
    results = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "git_commit": report.git_commit(),
               "setup": {"n": args.n, "widths": args.widths, "epochs": args.epochs, "optimizer": "adam", "lr": 1e-3,
                         "batch_size": 64, "samples": args.samples, "bisection_samples": args.bisection_samples,
                         "repeats": args.repeats},
               "gpu": "present" if torch.cuda.is_available() else "none on this machine: no GPU rows",
               "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
