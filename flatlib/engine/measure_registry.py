"""The registry behind ``flatlib.measures``: a measure's entry (``Measure``: its family, invariance
tag and version), ``register``, named variants and diagnostics, ``lookup``, and the checks every
measure shares. The measures themselves register here from ``sharpness``, ``weakness`` and
``margins``, in that order, when ``flatlib.measures`` imports them.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from flatlib.engine import data as fdata
from flatlib.engine import models
from flatlib.infrastructure import keys
from flatlib.infrastructure.threads import one_thread

FAMILIES = ("sharpness", "weakness", "simplicity", "bound", "margin")
# Extras (``EXTRAS``) may also be diagnostics: numbers about how a measure behaved, not measures.
EXTRA_FAMILIES = (*FAMILIES, "diagnostic")


@dataclass(frozen=True)
class Measure:
    name: str
    family: str
    invariant: bool
    fn: Callable
    needs_init: bool = False  # takes init=<the network's initial state dict>
    fixed: dict = field(default_factory=dict)  # options a named variant fixes (``EXTRAS``)
    reads_unseen_only: bool = False  # reads no training image, only unseen probe inputs
    # The version of the computation (``flatlib.keys``): bump it with any change that can change
    # the measure's value (its code or anything it calls, e.g. flatlib.hessian), and re-record
    # the fingerprints (``python -m flatlib fingerprints --record``). A variant shares its base's.
    version: int = 1

    def __call__(self, model: nn.Module, data, subsample: int | None = None, **options) -> float:
        """The measure of ``model`` on ``data``. A network without parameters, with a
        non-finite weight, or whose outputs on ``data`` are not all finite (a diverged network)
        is refused with one error before any work, and so is a NaN result: a measure never
        reports a plausible number for a broken network.

        With ``subsample`` (every measure takes it), the measure sees a fixed class-stratified
        subset of that many of the training examples (``flatlib.data.subsample``, seed 0), so a
        network trained on 20,000 images costs no more to measure than one trained on 1,000;
        a measure that reads only unseen probe inputs (``reads_unseen_only``) still draws them
        from outside the whole training subset, so for it ``subsample`` changes nothing.

        It runs on one CPU thread (the process's count is restored afterwards): how a product
        is split across threads changes the order of its floating-point sums, so on two threads
        some measures differ from one thread's in the last bits, while the store key knows
        nothing of threads. One thread (``flatlib.threads``) makes a stored number the same
        whoever computed it."""
        clash = sorted(set(options) & set(self.fixed))
        if clash:
            raise ValueError(f"{self.name} is a named variant that fixes {clash}; use the base measure to vary them")
        if subsample is not None and not self.reads_unseen_only:
            data = _subsample(data, subsample)
        check_network(model, data, self.name)
        keys.note(f"measure:{self.name}", self.version)
        with one_thread():
            value = float(self.fn(model, data, **self.fixed, **options))
        if math.isnan(value):
            raise MeasureError(f"measure {self.name!r} came out NaN on this network; it is not reported.")
        return value

    @property
    def doc(self) -> str:
        return self.fn.__doc__ or ""


MEASURES: dict[str, Measure] = {}
# Named variants of registered measures (other fixed options) and diagnostics: computed only
# when a chapter asks for them by name, never part of "every measure in the registry". A change
# to a pre-registered measure is a new entry here, never an edit of the registered one.
EXTRAS: dict[str, Measure] = {}


def lookup(name: str) -> Measure:
    """The measure, variant or diagnostic called ``name``; an unknown name lists the known ones."""
    if name in MEASURES:
        return MEASURES[name]
    if name in EXTRAS:
        return EXTRAS[name]
    raise KeyError(f"unknown measure {name!r}; registered: {sorted(MEASURES)}; variants and diagnostics: "
                   f"{sorted(EXTRAS)}")


keys.register_kind("measure", lambda name: lookup(name).version)


# Subsamples, kept while their data lives, so two measures of one table share the very tensors
# (and with them the memoised exact diagonal).
# id(images) -> (weak reference to the images, {n: subsample}); an entry whose images died is replaced.
_SUBSAMPLES: dict[int, tuple] = {}


def _subsample(data, n: int):
    if not isinstance(data, fdata.Dataset):
        raise ValueError("subsample needs data as a flatlib.data.Dataset")
    for key in [k for k, (ref, _) in _SUBSAMPLES.items() if ref() is None]:
        del _SUBSAMPLES[key]
    ref, kept = _SUBSAMPLES.get(id(data.images), (None, None))
    if ref is None or ref() is not data.images:
        kept = {}
        _SUBSAMPLES[id(data.images)] = (weakref.ref(data.images), kept)
    if n not in kept:
        kept[n] = fdata.subsample(data, n)
    return kept[n]


class MeasureError(ValueError):
    """A network a measure cannot honestly be computed on."""


def check_network(model: nn.Module, data, name: str = "this measure") -> None:
    """Refuse a network that has no parameters, a non-finite weight, or non-finite outputs on
    ``data`` (inputs as the first element of ``data``), with one error that says what to do."""
    params = list(model.parameters())
    if not params:
        raise MeasureError(f"{name}: the network has no parameters; measures need a trained network.")
    if not all(torch.isfinite(p).all() for p in params):
        raise MeasureError(f"{name}: the network has non-finite weights (it diverged); "
                           "train it with a smaller learning rate, or leave it out of the study.")
    inputs, _ = data
    if not torch.isfinite(models.predict(model, inputs)).all():
        raise MeasureError(f"{name}: the network's outputs on the data are not all finite (it diverged); "
                           "train it with a smaller learning rate, or leave it out of the study.")


def register(name: str, family: str, invariant: bool, needs_init: bool = False, reads_unseen_only: bool = False,
             version: int = 1):
    """Register ``fn`` as measure ``name`` of ``family``, at ``version`` (``Measure.version``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")

    def wrap(fn):
        MEASURES[name] = Measure(name, family, invariant, fn, needs_init, reads_unseen_only=reads_unseen_only,
                                 version=version)
        return fn

    return wrap


def variant(name: str, base: str, **fixed) -> None:
    """Register ``name`` in ``EXTRAS``: the registered measure ``base`` with ``fixed`` options (and
    its version)."""
    measure = MEASURES[base]
    EXTRAS[name] = Measure(name, measure.family, measure.invariant, measure.fn, measure.needs_init, dict(fixed),
                           measure.reads_unseen_only, measure.version)


def diagnostic(name: str, fn: Callable, invariant: bool, version: int = 1, **fixed) -> None:
    """Register ``name`` in ``EXTRAS`` as a diagnostic: a number about a measure, not a measure."""
    EXTRAS[name] = Measure(name, "diagnostic", invariant, fn, False, dict(fixed), version=version)
