"""Side-by-side speed of flatlib.hessian against PyHessian and curvlinops, in one process.

Same model (784-512-512-10 ReLU MLP trained for one epoch on 5,000 MNIST images), same 1,000
training images, same tolerance. Writes ``benchmarks/results/hessian.json``; every figure
carries the device it was measured on. Run with ``make bench`` (or ``python -m
benchmarks.hessian_bench [--repeats N] [--device cpu|cuda]``).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flatlib import data, hessian, report, study
from flatlib.train import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results" / "hessian.json"
TOL = 1e-3


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up), and its last value."""
    fn()
    times, value = [], None
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        value = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), value


def setup(device):
    config = TrainConfig(dataset="mnist", n=5000, widths=(512, 512), epochs=1, target_train_acc=None, lr=0.05)
    model = study.trained(config).model.to(device).eval()
    ds = data.load("mnist", "train", n=1000, seed=1)
    return model, ds.images.to(device), ds.labels.to(device)


def bench_products(model, x, y, device, repeats):
    params = [p for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    v_flat = torch.randn(sum(p.numel() for p in params), device=device)
    v_list = list(torch.split(v_flat, [p.numel() for p in params]))
    v_list = [t.reshape(p.shape) for t, p in zip(v_list, params)]
    out = {}

    def gradient():
        return torch.autograd.grad(F.cross_entropy(model(x), y), params)

    out["gradient_s"], _ = timed(gradient, device, repeats)

    op = hessian.HessianOperator(model, (x, y))
    out["hvp_flatlib_s"], _ = timed(lambda: op.matvec(v_flat), device, repeats)
    out["hvp_flatlib_first_s"], _ = timed(lambda: hessian.hvp(model, (x, y), v_flat), device, repeats)

    def double_backward():
        g = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        return torch.autograd.grad(g, params, grad_outputs=v_list)

    out["hvp_double_backward_s"], _ = timed(double_backward, device, repeats)

    from torch.func import functional_call, grad, jvp, linearize

    w = {n: p.detach() for n, p in zip(names, params)}
    v_dict = dict(zip(names, v_list))

    def loss_of(wd):
        return F.cross_entropy(functional_call(model, wd, (x,)), y)

    out["hvp_func_fwd_over_rev_s"], _ = timed(lambda: jvp(grad(loss_of), (w,), (v_dict,))[1], device, repeats)
    _, lin = linearize(grad(loss_of), w)
    out["hvp_func_linearize_s"], _ = timed(lambda: lin(v_dict), device, repeats)

    from pyhessian import hessian as PyHessian
    from pyhessian.utils import hessian_vector_product

    ph = PyHessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda")
    out["hvp_pyhessian_s"], _ = timed(lambda: hessian_vector_product(ph.gradsH, ph.params, v_list), device, repeats)
    model.zero_grad(set_to_none=True)

    from curvlinops import HessianLinearOperator

    cl = HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False)
    out["hvp_curvlinops_s"], _ = timed(lambda: cl @ v_flat, device, repeats)
    for key in list(out):
        if key.startswith("hvp_"):
            out[key.removesuffix("_s") + "_over_gradient"] = out[key] / out["gradient_s"]
    return out


def _pyhessian_module():
    """The module ``pyhessian.hessian`` (the package rebinds that name to the class)."""
    import sys

    import pyhessian  # noqa: F401

    return sys.modules["pyhessian.hessian"]


class Counter:
    """Counts calls of a matrix-vector function, for libraries that do not report HVPs."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def bench_top_eigenvalue(model, x, y, device, repeats):
    import scipy.sparse.linalg as sla

    params = list(model.parameters())
    # Reference: ARPACK (scipy eigsh) on curvlinops' operator at tight tolerance, an
    # implementation independent of flatlib's Lanczos.
    from curvlinops import HessianLinearOperator

    cl = HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False)
    reference = float(sla.eigsh(cl.to_scipy(np.float32), k=1, which="LA", tol=1e-8)[0][0])
    out = {"reference_top_eigenvalue": reference, "tolerance": TOL}

    def rel(value):
        return abs(value - reference) / abs(reference)

    def run_flatlib():
        return hessian.top_eigenvalues(model, (x, y), k=1, tol=TOL, seed=0)

    t, res = timed(run_flatlib, device, repeats)
    out["flatlib_lanczos"] = {"time_s": t, "hvps": res.num_hvps, "value": res.eigenvalues[0].item(),
                              "rel_error": rel(res.eigenvalues[0].item())}

    def run_power():
        return hessian.power_iteration(model, (x, y), tol=TOL, seed=0)

    t, res = timed(run_power, device, repeats)
    out["flatlib_power_iteration"] = {"time_s": t, "hvps": res.num_hvps, "value": res.eigenvalues[0].item(),
                                      "rel_error": rel(res.eigenvalues[0].item())}

    ph_module = _pyhessian_module()

    counter = Counter(ph_module.hessian_vector_product)
    ph_module.hessian_vector_product = counter

    def run_pyhessian():
        counter.calls = 0
        torch.manual_seed(0)
        ph = ph_module.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda")
        values, _ = ph.eigenvalues(top_n=1, tol=TOL, maxIter=100)
        model.zero_grad(set_to_none=True)
        return values[0]

    t, value = timed(run_pyhessian, device, repeats)
    ph_module.hessian_vector_product = counter.fn
    out["pyhessian"] = {"time_s": t, "hvps": counter.calls, "value": value, "rel_error": rel(value)}

    def run_curvlinops():
        op = HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False)
        scipy_op = op.to_scipy(np.float32)
        counted = Counter(scipy_op.matvec)
        wrapped = sla.LinearOperator(scipy_op.shape, matvec=counted, dtype=np.float32)
        value = float(sla.eigsh(wrapped, k=1, which="LA", tol=TOL)[0][0])
        return value, counted.calls

    t, (value, calls) = timed(run_curvlinops, device, repeats)
    out["curvlinops_scipy_eigsh"] = {"time_s": t, "hvps": calls, "value": value, "rel_error": rel(value)}
    out["speedup_flatlib_over_pyhessian"] = out["pyhessian"]["time_s"] / out["flatlib_lanczos"]["time_s"]
    return out


def bench_trace(model, x, y, device, hutchinson_probes=60):
    op = hessian.HessianOperator(model, (x, y))
    t = time.perf_counter()
    base = hessian.trace(op, probes=hutchinson_probes, method="hutchinson", seed=0)
    _sync(device)
    out = {"hutchinson": {"probes": hutchinson_probes, "value": base.value, "stderr": base.stderr,
                          "time_s": time.perf_counter() - t}}
    target = base.stderr
    budgets = [12, 18, 24, 30, 45, 60, 90, 120]
    out["hutchpp_by_budget"] = []
    reached = None
    for budget in budgets:
        t = time.perf_counter()
        est = hessian.trace(op, probes=budget, method="hutch++", seed=0)
        _sync(device)
        out["hutchpp_by_budget"].append({"probes": budget, "value": est.value, "stderr": est.stderr,
                                         "time_s": time.perf_counter() - t})
        if reached is None and est.stderr <= target:
            reached = budget
    out["hutchpp_probes_to_match_hutchinson_stderr"] = reached
    out["hutchpp_hvp_ratio"] = None if reached is None else reached / hutchinson_probes

    ph_module = _pyhessian_module()

    counter = Counter(ph_module.hessian_vector_product)
    ph_module.hessian_vector_product = counter
    torch.manual_seed(0)
    t = time.perf_counter()
    ph = ph_module.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda")
    samples = ph.trace(maxIter=100, tol=TOL)
    model.zero_grad(set_to_none=True)
    ph_module.hessian_vector_product = counter.fn
    out["pyhessian"] = {"value": float(np.mean(samples)), "probes": counter.calls,
                        "stderr": float(np.std(samples, ddof=1) / np.sqrt(len(samples))),
                        "time_s": time.perf_counter() - t}
    from curvlinops import HessianLinearOperator, hutchpp_trace

    cl = HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), list(model.parameters()), [(x, y)],
                               check_deterministic=False)
    t = time.perf_counter()
    value = hutchpp_trace(cl, hutchinson_probes).item()
    out["curvlinops_hutchpp"] = {"probes": hutchinson_probes, "value": value, "time_s": time.perf_counter() - t}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = {"model": "784-512-512-10 ReLU MLP, 1 epoch SGD on 5,000 MNIST images",
               "data": "1,000 MNIST training images (seed 1)", "torch": torch.__version__,
               "platform": platform.platform(), "flatlib_source_hash": report.source_hash(),
               "git_commit": report.git_commit(), "figures": {}}
    for name in devices:
        device = torch.device(name)
        model, x, y = setup(device)
        print(f"[{name}] products", flush=True)
        products = bench_products(model, x, y, device, args.repeats)
        print(json.dumps(products, indent=1), flush=True)
        print(f"[{name}] top eigenvalue", flush=True)
        eig = bench_top_eigenvalue(model, x, y, device, max(1, args.repeats // 2))
        print(json.dumps(eig, indent=1), flush=True)
        print(f"[{name}] trace", flush=True)
        tr = bench_trace(model, x, y, device)
        print(json.dumps(tr, indent=1), flush=True)
        results["figures"][name] = {"device": report.device_description(name), "products": products,
                                    "top_eigenvalue": eig, "trace": tr}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
