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
same data (``stack``): ``hessian_diagonals`` gives every member's exact Hessian diagonal (by
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
from flatlib.engine import hessian, networks
from flatlib.engine import train as ftrain
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


class EnsembleError(ValueError):
    """Configs that cannot be trained as one ensemble."""


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


# ----------------------------------------------------------------------------- batched curvature

@dataclasses.dataclass
class Stack:
    """The weights of M ReLU MLPs of one architecture (``flatlib.models.mlp``), stacked:
    ``weights[l]`` is (M, out, in) and ``biases[l]`` (M, out) for the l-th Linear layer. The
    stacked tensors are copies; the members are left as they are."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    @property
    def members(self) -> int:
        return len(self.weights[0])

    @property
    def num_params(self) -> int:
        """Parameters per member."""
        return sum(w[0].numel() + b[0].numel() for w, b in zip(self.weights, self.biases))

    def params(self) -> list[torch.Tensor]:
        """The stacked tensors in each member's ``parameters()`` order (weight, bias per layer)."""
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    def flat(self, tensors) -> torch.Tensor:
        """Per-member tensors in ``params()`` order, flattened to (M, num_params)."""
        return torch.cat([t.reshape(self.members, -1) for t in tensors], dim=1)

    def unflat(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The inverse of ``flat``: (K, num_params) to tensors in ``params()`` order, K members each."""
        shapes = [t.shape[1:] for t in self.params()]
        pieces = torch.split(flat, [shape.numel() for shape in shapes], dim=1)
        return [piece.reshape(len(flat), *shape) for piece, shape in zip(pieces, shapes)]

    def forward(self, x: torch.Tensor, params=None):
        """Logits (M, N, classes) of every member on the same inputs ``x`` (N, ...)."""
        params = self.params() if params is None else params
        a = x.reshape(len(x), -1)
        for i in range(0, len(params), 2):
            w, b = params[i], params[i + 1]
            if i == 0:  # the inputs are shared: one product with every member's first layer side by side
                z = (a @ w.flatten(0, 1).T).view(len(a), *w.shape[:2]).transpose(0, 1) + b[:, None, :]
            else:
                z = torch.baddbmm(b[:, None, :], a, w.transpose(1, 2))
            if i + 2 == len(params):
                return z
            a = z * (z > 0)  # ReLU, with PyTorch's zero gradient at 0


def stack(models) -> Stack:
    """Stack trained ``flatlib.models.mlp`` networks (``Flatten -> [Linear -> ReLU]* -> Linear``
    with biases, no BatchNorm) of one architecture, device and dtype. Anything else is refused:
    the loop (``flatlib.hessian``) measures it."""
    models = list(models)
    if not models:
        raise EnsembleError("stack needs at least one model")
    linears = [_linear_layers(model, k) for k, model in enumerate(models)]
    frozen = [k for k, model in enumerate(models) if not all(p.requires_grad for p in model.parameters())]
    if frozen:
        raise EnsembleError(f"models {frozen} have frozen parameters (requires_grad=False); flatlib.hessian "
                            "leaves them out of the Hessian and the stacked paths do not: unfreeze them")
    layouts = {k: [(tuple(p.shape), str(p.device), p.dtype) for p in model.parameters()]
               for k, model in enumerate(models)}
    distinct: dict[str, list[int]] = {}
    for k, layout in layouts.items():
        distinct.setdefault(str(layout), []).append(k)
    if len(distinct) > 1:
        raise EnsembleError("the models differ in architecture, device or dtype (shape, device, dtype of each "
                            "parameter): " + "; ".join(f"models {ks}: {v}" for v, ks in distinct.items()))
    layers = range(len(linears[0]))
    return Stack(weights=[torch.stack([ms[j].weight.detach() for ms in linears]) for j in layers],
                 biases=[torch.stack([ms[j].bias.detach() for ms in linears]) for j in layers])


def _linear_layers(model, k):
    layers = hessian.plain_mlp_layers(model)
    if layers is None:
        raise EnsembleError(f"model {k} is not a plain ReLU MLP (Flatten -> [Linear -> ReLU]* -> Linear with "
                            "biases, flatlib.models.mlp without BatchNorm): measure it with flatlib.hessian")
    return layers


def _prepare(models, data):
    """The stack, and ``data = (inputs, targets)`` on its device (inputs in its dtype), refused if empty."""
    st = models if isinstance(models, Stack) else stack(models)
    x, y = data
    w0 = st.weights[0]
    if len(y) == 0 or len(x) != len(y):
        raise ValueError(f"data must be (inputs, targets) of one positive length, got {len(x)} and {len(y)}")
    return st, x.to(w0.device, w0.dtype), y.to(w0.device)


def _positive(name, value):
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@torch.no_grad()
def hessian_diagonals(models, data, batch_size: int | None = 1000) -> torch.Tensor:
    """Every member's exact Hessian diagonal of the mean training cross-entropy, (M, num_params)
    in ``parameters()`` order: row m is ``flatlib.hessian.diagonal(models[m], data, batch_size)``,
    computed by the same function (``hessian.mlp_diagonals``) for all members at once on the
    stacked weights (the batched products may sum in another order than single ones: equal up
    to rounding)."""
    st, inputs, _ = _prepare(models, data)
    batch_size = len(inputs) if batch_size is None else _positive("batch_size", batch_size)
    return hessian.mlp_diagonals(st.weights, st.biases, inputs, batch_size)


def top_eigenvalues(models, data, tol: float = 1e-3, max_iter: int = 200, seed: int = 0) -> list[hessian.EigenResult]:
    """Every member's largest Hessian eigenvalue of the mean training cross-entropy, as
    ``flatlib.hessian.top_eigenvalues(models[m], data, k=1, tol=tol, max_iter=max_iter,
    seed=seed)`` gives it: the same start vector, Lanczos with full reorthogonalisation, and the
    same stopping rule (residual at most ``tol`` times the Ritz value), run for all members side
    by side. Each step takes one double backward through the stacked graph of the members still
    running; when some stop, the graph is rebuilt for the rest. One ``EigenResult`` per member."""
    st, x, y = _prepare(models, data)
    w0 = st.weights[0]
    size = st.num_params
    steps = min(_positive("max_iter", max_iter), size)
    v0 = hessian.random_unit(size, torch.Generator().manual_seed(seed), w0.device, w0.dtype)
    runs = {m: _LanczosRun(v0, steps) for m in range(st.members)}
    results: list[hessian.EigenResult | None] = [None] * st.members
    while runs:
        active = list(runs)
        matvec = _hvp(Stack([w[active] for w in st.weights], [b[active] for b in st.biases]), x, y)
        while len(runs) == len(active):
            products = matvec(torch.stack([runs[m].q for m in active]))
            for row, m in enumerate(active):
                run = runs[m]
                run.step(products[row])
                done = _ritz(run.alphas, run.betas, tol)
                if done[0] or run.invariant() or len(run.alphas) == steps:
                    results[m] = _eigen_result(done, run.basis, size)
                    del runs[m]
    return results


def _hvp(st: Stack, x, y):
    """``V -> (H_m v_m)_m`` for the members of ``st``, the first-order graph built once."""
    params = [t.clone().requires_grad_(True) for t in st.params()]
    with torch.enable_grad():
        logits = st.forward(x, params)
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(st.members), reduction="sum") / len(y)  # sum of means
        grad = st.flat(torch.autograd.grad(loss, params, create_graph=True))

    def matvec(v):
        with torch.enable_grad():
            return st.flat(torch.autograd.grad(grad, params, grad_outputs=v, retain_graph=True)).detach()
    return matvec


class _LanczosRun:
    """One member's Lanczos iteration, advanced one product at a time: the steps of
    ``hessian._lanczos`` (full reorthogonalisation by classical Gram-Schmidt twice, the basis grown
    by doubling), so that the products of many members can be taken together."""

    def __init__(self, v0, steps):
        self.q = v0 / v0.norm()
        self.steps = steps
        self.buffer = torch.empty(min(steps, 16), len(v0), device=v0.device, dtype=v0.dtype)
        self.alphas, self.betas = [], []

    @property
    def basis(self):
        return self.buffer[: len(self.alphas)]

    def step(self, w):
        j = len(self.alphas)
        if j == len(self.buffer):
            grow = torch.empty(min(len(self.buffer), self.steps - j), self.buffer.shape[1],
                               device=self.buffer.device, dtype=self.buffer.dtype)
            self.buffer = torch.cat([self.buffer, grow])
        self.buffer[j] = self.q
        alpha = torch.dot(w, self.q)
        past = self.buffer[: j + 1]
        for _ in range(2):
            w = w - past.T @ (past @ w)
        beta = w.norm()
        self.alphas.append(alpha.item())
        self.betas.append(beta.item())
        if not self.invariant():
            self.q = w / beta

    def invariant(self) -> bool:
        return self.betas[-1] <= 1e-12 * max(1.0, abs(self.alphas[-1]))


def _ritz(alphas, betas, tol):
    """(converged, theta, s, residual) of the top Ritz pair, as hessian.top_eigenvalues (k=1)."""
    theta, s = torch.linalg.eigh(hessian.tridiagonal(alphas, betas))
    residual = abs(betas[-1] * s[-1, -1].item())
    return residual <= tol * max(abs(theta[-1].item()), 1e-30), theta, s, residual


def _eigen_result(done, basis, size):
    converged, theta, s, residual = done
    steps = len(theta)
    vector = s[:, -1].to(basis.dtype).to(basis.device) @ basis
    return hessian.EigenResult(eigenvalues=theta[-1:].to(basis.dtype), eigenvectors=vector[None],
                               residuals=torch.tensor([residual], dtype=torch.float64), num_hvps=steps,
                               converged=bool(converged) or steps == size)


@torch.no_grad()
def perturbed_errors(models, data, std, samples: int, seed: int = 0, max_bytes: int | None = None) -> torch.Tensor:
    """(M, samples) training error rates (float64) of every member at ``w_m + std_m * xi_s``: row m
    counts the images ``flatlib.pacbayes``' sampler finds misclassified for ``models[m]`` with this
    ``std``, ``samples`` and ``seed`` (``_Sampler(models[m], data, samples, seed).errors(std[m])``,
    which returns float32), up to rounding of the logits. ``std`` is a scalar, a (num_params,) vector
    for every member, (M, 1) for one scale per member, or (M, num_params).

    The draws ``xi_s`` are the sampler's: standard normal in the members' dtype from one CPU
    generator seeded with ``seed``, the same for every member (members of one study share the
    measure's seed). As many perturbed networks as fit in ``max_bytes`` of weights go through the
    stacked forward together (at least one draw per pass; the activations, about
    ``len(data) * sum(widths)`` numbers per perturbed network, come on top): by default 32 MiB on CPU,
    where larger passes fall out of the caches, and 512 MiB on a GPU."""
    st, x, y = _prepare(models, data)
    w0 = st.weights[0]
    samples = _positive("samples", samples)
    count, size = st.members, st.num_params
    w = st.flat(st.params())
    std = torch.as_tensor(std, dtype=w0.dtype).to(w0.device)
    if std.shape not in ((), (size,), (count, 1), (count, size)):
        raise ValueError(f"std has shape {tuple(std.shape)}; give a scalar, ({size},), ({count}, 1) or "
                         f"({count}, {size}) for {count} members of {size} parameters")
    std = std.expand(count, size)
    if max_bytes is None:
        max_bytes = (32 if w0.device.type == "cpu" else 512) * 2 ** 20
    per_pass = max(1, max_bytes // (count * size * w0.element_size()))
    gen = torch.Generator().manual_seed(seed)
    errors = torch.empty(count, samples, dtype=torch.float64)
    for start in range(0, samples, per_pass):
        draws = torch.stack([torch.randn(size, generator=gen, dtype=w0.dtype)
                             for _ in range(min(per_pass, samples - start))]).to(w0.device)  # (k, P)
        perturbed = (w[None] + std[None] * draws[:, None]).flatten(0, 1)  # (k * M, P), draw-major
        logits = st.forward(x, st.unflat(perturbed))
        wrong = (logits.argmax(2) != y).double().mean(1).view(len(draws), count)
        errors[:, start:start + len(draws)] = wrong.T.cpu()
    return errors
