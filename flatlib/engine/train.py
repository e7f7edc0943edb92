"""Seeded, deterministic training from a frozen config.

One config, one network: the seed fixes the initialisation, the data order and any
augmentation, and CPU training runs on one thread, so the same config gives bit-identical
weights whatever the machine's core count. A non-finite loss stops that run and is recorded
in its history (``status == "diverged"``) instead of raising, so one bad network does not
kill a sweep of a hundred.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from flatlib.engine import data as fdata
from flatlib.engine import models
from flatlib.infrastructure import keys
from flatlib.infrastructure.output import progress as progress_bar
from flatlib.infrastructure.threads import one_thread

# The version of the training recipe (``flatlib.keys``): bump it with any change that can change
# a trained network's weights or history, and re-record the fingerprints
# (``python -m flatlib fingerprints --record``); ``tests/test_fingerprints.py`` fails otherwise.
#   1  the first two waves (keyed by source bytes, before versions)
#   2  a patience exit restores the weights of the epoch with the lowest training loss
VERSION = 2
# The name summaries record this VERSION under ("module:flatlib.train"), kept wherever the module lives.
VERSION_NAME = "flatlib.train"

OPTIMIZERS = ("sgd", "adam")
# A training loss this many times the loss at initialisation has exploded: the run is marked
# diverged, as a non-finite loss is, and its measures are never computed.
EXPLODED_FACTOR = 10.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained network.

    ``epochs`` is a cap; with ``target_train_acc`` training stops at the end of the first
    epoch whose full-pass training accuracy reaches it, with ``target_train_loss`` at the end
    of the first epoch whose full-pass training cross-entropy (nats) is at or below it, and
    with ``patience`` once that loss has not set a new minimum for ``patience`` epochs in a
    row (the training loss has stopped improving), whichever comes first. ``sam_rho > 0`` turns on SAM
    (Foret et al. 2021). ``augment`` adds random shifts of up to 2 pixels.

    With ``lr_decay`` (a factor in (0, 1)), a plateau first lowers the learning rate instead of
    ending training, as ``torch.optim.lr_scheduler.ReduceLROnPlateau`` does: the first
    ``lr_decays`` times the loss has not improved for ``patience`` epochs, every learning rate is
    multiplied by ``lr_decay`` and the count starts again; the plateau after the last decay ends
    training (``patience`` is then required). Added after results were versioned, with a default
    that keeps the old recipe, so it re-keys no network (``flatlib.keys.canonical``).
    """

    dataset: str = "mnist"
    n: int | None = 2000
    data_seed: int = 0
    arch: str = "mlp"
    widths: tuple[int, ...] = (512, 512)
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 30
    target_train_acc: float | None = 1.0
    weight_decay: float = 0.0
    sam_rho: float = 0.0
    augment: bool = False
    seed: int = 0
    device: str = "cpu"
    target_train_loss: float | None = None
    patience: int | None = None
    lr_decay: float | None = field(default=None, metadata={"neutral": None})
    lr_decays: int = field(default=2, metadata={"neutral": 2})

    def __post_init__(self):
        problems = []
        widths = tuple(self.widths)
        if not all(isinstance(w, numbers.Real) and not isinstance(w, bool) and float(w).is_integer() for w in widths):
            problems.append(f"widths must be whole numbers, got {list(widths)!r}")
        else:
            object.__setattr__(self, "widths", tuple(int(w) for w in widths))
        keys.coerce_fields(self)
        if self.dataset not in fdata.DATASETS:
            problems.append(f"dataset must be one of {fdata.DATASETS}, got {self.dataset!r}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.arch not in ("mlp", "cnn"):
            problems.append(f"arch must be 'mlp' or 'cnn', got {self.arch!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if self.batch_size < 1 or self.epochs < 1:
            problems.append("batch_size and epochs must be at least 1")
        if self.n is not None and self.batch_size > self.n:
            problems.append(f"batch_size {self.batch_size} exceeds the training-set size n={self.n}")
        if self.weight_decay < 0 or self.sam_rho < 0:
            problems.append("weight_decay and sam_rho must be non-negative")
        if self.target_train_acc is not None and not 0 < self.target_train_acc <= 1:
            problems.append(f"target_train_acc must be in (0, 1], got {self.target_train_acc!r}")
        if self.target_train_loss is not None and not self.target_train_loss > 0:
            problems.append(f"target_train_loss must be a positive number of nats, got {self.target_train_loss!r}")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be at least 1 epoch, got {self.patience!r}")
        if self.lr_decay is not None and not (0 < self.lr_decay < 1 and self.patience is not None):
            problems.append(f"lr_decay must lie in (0, 1) and needs a patience, got {self.lr_decay!r}")
        if isinstance(self.lr_decays, bool) or not isinstance(self.lr_decays, int) or self.lr_decays < 1:
            problems.append(f"lr_decays must be a positive integer, got {self.lr_decays!r}")
        if problems:
            raise ValueError("Invalid TrainConfig: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """What this network means (``flatlib.keys``): the normalised config, the versions of
        the data subsets, the architectures and the training recipe, and the environment class
        of ``device``. A refactor of the training code re-keys nothing; a bumped version or
        another CPU instruction set gives new keys, so a network is never served across them."""
        return keys.digest("network", keys.canonical(self), versions(), keys.environment(self.device))


def versions() -> dict[str, int]:
    """The versions a trained network depends on."""
    return {"data": fdata.VERSION, "models": models.VERSION, "train": VERSION}


@dataclass
class TrainResult:
    config: TrainConfig
    model: nn.Module
    initial_state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    status: str = "ok"  # "ok" or "diverged"
    wall_time_s: float = 0.0

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def stopped_by(self) -> str:
        """Which rule ended training: "diverged", "target_train_acc", "target_train_loss",
        "patience" or "epoch cap" (read from the config and the last epoch, so it holds for
        networks cached before training recorded its events)."""
        config, last = self.config, (self.history[-1] if self.history else {})
        if self.diverged:
            return "diverged"
        if config.target_train_acc is not None and last.get("train_acc", -1) >= config.target_train_acc:
            return "target_train_acc"
        if config.target_train_loss is not None and last.get("train_loss", math.inf) <= config.target_train_loss:
            return "target_train_loss"
        if last.get("event") == "training loss stopped improving":
            return "patience"
        return "epoch cap"


def _shift(images: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels per image (zero padding)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # n x h
    cols = (dx[:, None] + torch.arange(w)[None, :])  # n x w
    batch = torch.arange(n)[:, None, None]
    return padded[:, 0][batch, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def init_model(config: TrainConfig) -> nn.Module:
    """The untrained network of ``config``, its weights drawn from ``config.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return models.build(config.arch, config.widths)


def logit_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean cross-entropy (nats) and accuracy of ``logits`` against ``labels``."""
    labels = labels.to(logits.device)
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "acc": (logits.argmax(1) == labels).double().mean().item(),
    }


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean cross-entropy (nats) and accuracy of ``model`` on a labelled set."""
    return logit_metrics(models.predict(model, images), labels)


def sam_step(model, loss_fn, opt, rho):
    """One SAM update: ascend to w + rho g/|g|, take the gradient there, step from w."""
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
    eps = [rho * p.grad / (grad_norm + 1e-12) for p in params]
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
    opt.zero_grad()
    loss_fn().backward()
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.sub_(e)
    opt.step()


def train(config: TrainConfig, progress: bool = False) -> TrainResult:
    """Train the network ``config`` describes; never raises on divergence. A run whose loss
    becomes non-finite, or whose training loss at the end of an epoch exceeds
    ``EXPLODED_FACTOR`` times its loss at initialisation, stops and is marked diverged.

    On CPU the loop runs with ``torch.set_num_threads(1)`` and the process's thread count is
    restored afterwards: how a matrix product is split across threads changes the order of
    its floating-point sums, so without this the weights would depend on the machine's core
    count while the cache key (``TrainConfig.key``) does not. One thread makes the same config
    give bit-identical weights whatever the thread count; a different CPU instruction set or
    torch version may still change the last bits."""
    if torch.device(config.device).type != "cpu":
        return _train(config, progress)
    with one_thread():
        return _train(config, progress)


def _train(config: TrainConfig, progress: bool) -> TrainResult:
    start = time.perf_counter()
    device = torch.device(config.device)
    ds = fdata.load(config.dataset, "train", n=config.n, seed=config.data_seed)
    x_all, y_all = ds.images.to(device), ds.labels.to(device)
    model = init_model(config).to(device)
    initial_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    result = TrainResult(config=config, model=model, initial_state=initial_state)
    epochs = range(1, config.epochs + 1)
    if progress:
        epochs = progress_bar(epochs, f"train seed={config.seed}", leave=False)
    best_loss, since_best, best_epoch, best_state, decays = math.inf, 0, 0, None, 0
    initial_loss = evaluate(model, x_all, y_all)["loss"]
    for epoch in epochs:
        model.train()
        order = torch.randperm(len(y_all), generator=gen)
        running, seen = 0.0, 0
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            xb, yb = x_all[idx.to(device)], y_all[idx.to(device)]
            if config.augment:
                xb = _shift(xb.cpu(), gen).to(device)

            def loss_fn(xb=xb, yb=yb):
                return F.cross_entropy(model(xb), yb)

            opt.zero_grad()
            loss = loss_fn()
            if not torch.isfinite(loss):
                result.status = "diverged"
                result.history.append({"epoch": epoch, "step": i // config.batch_size,
                                       "loss": loss.item(), "event": "non-finite loss"})
                result.wall_time_s = time.perf_counter() - start
                return result
            loss.backward()
            if config.sam_rho > 0:
                sam_step(model, loss_fn, opt, config.sam_rho)
            else:
                opt.step()
            running += loss.item() * len(idx)
            seen += len(idx)
        metrics = evaluate(model, x_all, y_all)
        result.history.append({"epoch": epoch, "batch_loss": running / seen,
                               "train_loss": metrics["loss"], "train_acc": metrics["acc"]})
        if not math.isfinite(metrics["loss"]):
            result.status = "diverged"
            result.history[-1]["event"] = "non-finite loss"
            break
        if metrics["loss"] > EXPLODED_FACTOR * initial_loss:
            result.status = "diverged"
            result.history[-1]["event"] = f"loss exploded (over {EXPLODED_FACTOR:g}x its initial {initial_loss:.3g})"
            break
        if config.target_train_acc is not None and metrics["acc"] >= config.target_train_acc:
            result.history[-1]["event"] = "reached target_train_acc"
            break
        if config.target_train_loss is not None and metrics["loss"] <= config.target_train_loss:
            result.history[-1]["event"] = "reached target_train_loss"
            break
        if metrics["loss"] < best_loss:
            best_loss, since_best, best_epoch = metrics["loss"], 0, epoch
            if config.patience is not None:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        if config.patience is not None and since_best >= config.patience and config.lr_decay is not None \
                and decays < config.lr_decays:
            decays, since_best = decays + 1, 0
            for group in opt.param_groups:
                group["lr"] *= config.lr_decay
            result.history[-1]["event_lr"] = f"learning rate x{config.lr_decay:g} (decay {decays})"
        if config.patience is not None and since_best >= config.patience:
            # Training stopped improving: the network kept is the one of its lowest training
            # loss, not the last, which may sit up to ``patience`` epochs past that minimum.
            model.load_state_dict(best_state)
            result.history[-1].update(event="training loss stopped improving", restored_epoch=best_epoch,
                                      restored_train_loss=best_loss)
            break
    model.eval()
    result.wall_time_s = time.perf_counter() - start
    return result
