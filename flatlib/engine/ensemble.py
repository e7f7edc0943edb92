"""Networks that differ only in their seed, trained together as one vectorised ensemble.

On a GPU, a sweep of small networks is bound by kernel launches rather than arithmetic; training M
networks of one architecture as one batched computation (``torch.func.stack_module_state``,
``functional_call`` and ``vmap``) does M networks' work per launch. ``train_ensemble`` does for
each of its configs what ``flatlib.train.train`` does, step for step: the same initial weights
(``train.init_model``), the same data order (each config's own seeded generator), the same
optimiser update (SGD and Adam are elementwise, so one optimiser over the stacked parameters
updates every member as its own optimiser would), and the same per-member stopping rules and
divergence checks. A member that stops is set aside at that point while the others go on. Each
member therefore equals the network the loop trains up to floating-point rounding: batched matrix
products may sum in another order than single ones (``tests/test_ensemble.py`` checks weights,
histories and predictions against the loop on CPU).

SAM and augmentation are not vectorised here and are refused. ``sweep`` stores the members in the
store under their configs' keys, on CUDA only: on CPU the loop is as fast and bit-reproducible,
and a network in the store must not depend on which path trained it.

The curvature measures batch the same way, for trained MLPs of one architecture measured on the
same data (``stack``, in ``flatlib.engine.stacked``): ``hessian_diagonals``
gives every member's exact Hessian diagonal (by
``flatlib.hessian.diagonal``'s own function for MLPs, ``hessian.mlp_diagonals``, on the stacked
weights) and ``top_eigenvalues`` runs one Lanczos iteration per member side by side (as
``flatlib.hessian.top_eigenvalues`` with ``k=1``), each Hessian-vector product taken for all
members at once on the stacked weights, and ``perturbed_errors`` makes the PAC-Bayes measures'
Monte Carlo draws (as ``flatlib.pacbayes``' sampler) for every member and several draws in one
forward pass. ``tests/test_ensemble.py`` checks them against the loop and the curvature against
dense Hessians. The Lanczos steps and stopping rule repeat ``flatlib.hessian``'s (``_LanczosRun``,
``_ritz``): sharing them means editing a module that every published chapter loads, so it waits
for the next full re-run of the book.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from flatlib.engine import data as fdata
from flatlib.engine import networks
from flatlib.engine import train as ftrain
from flatlib.engine.stacked import (  # noqa: F401 (re-exported: the public surface of flatlib.ensemble)
    EnsembleError,
    Stack,
    hessian_diagonals,
    perturbed_errors,
    stack,
    top_eigenvalues,
)
from flatlib.infrastructure import executors
from flatlib.infrastructure.output import progress as progress_bar
from flatlib.infrastructure.threads import one_thread

# The version of this module's own computations (``flatlib.keys``): the batched curvature and
# Monte Carlo draws. Its training is ``flatlib.train``'s recipe (``train.VERSION``), member for
# member, so a network it stores keys as the loop's does.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.ensemble"), kept wherever the module lives.
VERSION_NAME = "flatlib.ensemble"

EVAL_BATCH = 2048  # as flatlib.models.predict


def check(configs) -> None:
    """Refuse, before any work, configs that are not one recipe with distinct seeds, or that use
    what the ensemble does not vectorise (SAM, augmentation)."""
    configs = list(configs)
    if not configs:
        raise EnsembleError("an ensemble needs at least one config")
    recipe = {dataclasses.replace(c, seed=0) for c in configs}
    problems = []
    if len(recipe) > 1:
        problems.append("the configs differ in more than their seed; group them with ensemble.groups first")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) < len(seeds):
        problems.append(f"seeds repeat: {seeds}")
    if configs[0].sam_rho > 0 or configs[0].augment or configs[0].lr_decay is not None:
        problems.append("SAM, augmentation and learning-rate decay are not vectorised; train these configs with "
                        "flatlib.study.sweep")
    if problems:
        raise EnsembleError("Cannot train as one ensemble: " + "; ".join(problems) + ".")


def groups(configs) -> list[list[ftrain.TrainConfig]]:
    """The configs (duplicates dropped) grouped by everything but the seed, in first-seen order."""
    out: dict[ftrain.TrainConfig, list[ftrain.TrainConfig]] = {}
    for config in dict.fromkeys(configs):
        out.setdefault(dataclasses.replace(config, seed=0), []).append(config)
    return list(out.values())


def dispatched_groups(configs) -> list[list]:
    """The configs of a sweep that train as ensembles (``groups``): every group of
    two or more distinct configs that differ only in their seed, on a CUDA device, and that the
    ensemble vectorises (``check``: no SAM, augmentation or learning-rate decay).
    Empty on CPU (unless ``flatlib.executors.ENSEMBLE_ON_CPU``), where the loop is as fast and bit-reproducible."""
    chosen_groups = []
    for group in groups(configs):
        if len(group) < 2 or not (executors.ENSEMBLE_ON_CPU or torch.device(group[0].device).type == "cuda"):
            continue
        try:
            check(group)
        except EnsembleError:
            continue
        chosen_groups.append(group)
    return chosen_groups


def train_ensemble(configs, progress: bool = False) -> list[ftrain.TrainResult]:
    """Train ``configs`` (one recipe, distinct seeds) as one ensemble: one ``TrainResult`` per
    config, in order, each as ``flatlib.train.train`` would return it (up to rounding), except
    that ``wall_time_s`` is the ensemble's elapsed time when that member stopped. On CPU it runs
    on one thread, as the loop does."""
    configs = list(configs)
    check(configs)
    if torch.device(configs[0].device).type != "cpu":
        return _train(configs, progress)
    with one_thread():
        return _train(configs, progress)


def _train(configs, progress):
    start = time.perf_counter()
    base_config = configs[0]
    device = torch.device(base_config.device)
    ds = fdata.load(base_config.dataset, "train", n=base_config.n, seed=base_config.data_seed)
    x_all, y_all = ds.images.to(device), ds.labels.to(device)
    members = [ftrain.init_model(c).to(device) for c in configs]
    results = [ftrain.TrainResult(config=c, model=None,
                                  initial_state={k: v.detach().clone().cpu() for k, v in m.state_dict().items()})
               for c, m in zip(configs, members)]
    params, buffers = stack_module_state(members)
    skeleton = copy.deepcopy(members[0]).to("meta")

    def forward(p, b, x):
        return functional_call(skeleton, (p, b), (x,))

    batched = vmap(forward)
    shared_input = vmap(forward, in_dims=(0, 0, None))
    stacked = list(params.values())
    if base_config.optimizer == "sgd":
        opt = torch.optim.SGD(stacked, lr=base_config.lr, momentum=base_config.momentum,
                              weight_decay=base_config.weight_decay)
    else:
        opt = torch.optim.Adam(stacked, lr=base_config.lr, weight_decay=base_config.weight_decay)

    @torch.no_grad()
    def full_pass():
        logits = torch.cat([shared_input(params, buffers, x_all[i:i + EVAL_BATCH])
                            for i in range(0, len(y_all), EVAL_BATCH)], dim=1)  # members x examples x classes
        loss = torch.stack([F.cross_entropy(member, y_all) for member in logits])
        acc = (logits.argmax(2) == y_all).double().mean(1)
        return loss, acc

    def state_of(k):
        return {name: value[k].detach().clone() for name, value in {**params, **buffers}.items()}

    def set_aside(k, state=None):
        model = ftrain.init_model(configs[k]).to(device)
        model.load_state_dict(state if state is not None else state_of(k))
        results[k].model = model.eval()
        results[k].wall_time_s = time.perf_counter() - start
        active[k] = False

    count = len(configs)
    active = [True] * count
    gens = [torch.Generator().manual_seed(c.seed) for c in configs]
    best_loss, since_best = [math.inf] * count, [0] * count
    best_epoch, best_state = [0] * count, [None] * count
    initial_loss = full_pass()[0].tolist()
    epochs = range(1, base_config.epochs + 1)
    for epoch in progress_bar(epochs, f"ensemble of {count}", progress, leave=False):
        if not any(active):
            break
        orders = torch.stack([torch.randperm(len(y_all), generator=g) for g in gens])
        running, seen = torch.zeros(count, dtype=torch.float64), 0
        for i in range(0, len(y_all), base_config.batch_size):
            idx = orders[:, i:i + base_config.batch_size].to(device)
            logits = batched(params, buffers, x_all[idx])
            losses = F.cross_entropy(logits.flatten(0, 1), y_all[idx].flatten(), reduction="none").view(idx.shape)
            losses = losses.mean(1)
            finite = torch.isfinite(losses).tolist()
            for k in range(count):
                if active[k] and not finite[k]:
                    results[k].status = "diverged"
                    results[k].history.append({"epoch": epoch, "step": i // base_config.batch_size,
                                               "loss": losses[k].item(), "event": "non-finite loss"})
                    set_aside(k)  # at the weights that gave the non-finite loss, as the loop returns them
            mask = torch.tensor(active, device=losses.device)
            if not mask.any():
                break
            opt.zero_grad()
            losses[mask].sum().backward()
            opt.step()
            running += losses.detach().double().cpu() * idx.shape[1]
            seen += idx.shape[1]
        loss, acc = full_pass()
        for k in range(count):
            if not active[k]:
                continue
            metrics = {"loss": loss[k].item(), "acc": acc[k].item()}
            history = results[k].history
            history.append({"epoch": epoch, "batch_loss": running[k].item() / seen,
                            "train_loss": metrics["loss"], "train_acc": metrics["acc"]})
            config = configs[k]
            if not math.isfinite(metrics["loss"]):
                results[k].status, history[-1]["event"] = "diverged", "non-finite loss"
            elif metrics["loss"] > ftrain.EXPLODED_FACTOR * initial_loss[k]:
                results[k].status = "diverged"
                history[-1]["event"] = (f"loss exploded (over {ftrain.EXPLODED_FACTOR:g}x its initial "
                                        f"{initial_loss[k]:.3g})")
            elif config.target_train_acc is not None and metrics["acc"] >= config.target_train_acc:
                history[-1]["event"] = "reached target_train_acc"
            elif config.target_train_loss is not None and metrics["loss"] <= config.target_train_loss:
                history[-1]["event"] = "reached target_train_loss"
            else:
                if metrics["loss"] < best_loss[k]:
                    best_loss[k], since_best[k], best_epoch[k] = metrics["loss"], 0, epoch
                    if config.patience is not None:
                        best_state[k] = state_of(k)
                else:
                    since_best[k] += 1
                if config.patience is not None and since_best[k] >= config.patience:
                    history[-1].update(event="training loss stopped improving", restored_epoch=best_epoch[k],
                                       restored_train_loss=best_loss[k])
                    set_aside(k, best_state[k])  # the lowest training loss's weights, as the loop keeps
                    continue
            if "event" in history[-1]:
                set_aside(k)
    for k in range(count):
        if active[k]:
            set_aside(k)  # the epoch cap
    return results


def sweep(configs, progress: bool = True) -> list[ftrain.TrainResult]:
    """Train (or fetch) every config, ensemble by ensemble (``groups``), storing each network in
    the store under its config's key as ``flatlib.study.sweep`` does; the results in the order of
    ``configs``. CUDA configs only (see the module docstring)."""
    configs = list(configs)
    cpu = sorted({c.device for c in configs if torch.device(c.device).type == "cpu"})
    if cpu:
        raise EnsembleError("ensemble.sweep is for CUDA configs: on CPU the loop (flatlib.study.sweep) is as fast "
                            "and bit-reproducible, and the store must not depend on which path trained a network; "
                            f"got device(s) {cpu}")
    return store_ensembles(configs, progress)


def store_ensembles(configs, progress):
    """``sweep`` on any device: for ``flatlib.study``'s dispatch (``dispatched_groups``)."""
    found = {c: networks.load_network(c) for c in dict.fromkeys(configs)}
    missing = [c for c, r in found.items() if r is None]
    for group in progress_bar(groups(missing), "ensembles", progress):
        for result in train_ensemble(group):
            networks.save_network(result)
            found[result.config] = result
    return [found[c] for c in configs]


