"""Behavioural fingerprints: a canary set that recomputes every versioned computation in seconds,
so that a behaviour change whose version was not bumped is caught by a test, not by memory.

Each canary computes a few numbers of one or more computations on fixed inputs (a tiny network
trained on 256 MNIST images, seeded random tables, a 5-bit domain) and names the versions it
guards (``flatlib.keys``: ``module:flatlib.train``, ``measure:top_eigenvalue``, ...). The numbers
and the versions are committed in ``flatlib/fingerprints.json``. ``check`` compares a
fresh computation with them:

- the numbers moved while the versions did not: the behaviour changed without a bump, and the
  results stored under the old keys would be served as if nothing changed ("bump its version");
- the versions moved while the numbers were not re-recorded: re-record them.

Numbers are compared at ``RTOL`` relative (``ATOL`` absolute near zero): wide enough for the
rounding of another CPU instruction set (checked with ``ATEN_CPU_CAPABILITY=default``), narrow
enough for a 0.1 % change of a training constant (``tests/test_fingerprints.py`` shows both).
Counts, states and labels are compared exactly.

Every canary runs on one thread, in a temporary results store, and touches nothing else.
``python -m flatlib fingerprints`` checks; ``--record`` re-records after a deliberate bump.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from flatlib.infrastructure import keys
from flatlib.infrastructure.threads import one_thread

PATH = Path(__file__).resolve().parents[1] / "fingerprints.json"
RTOL, ATOL = 1e-4, 1e-7


@dataclass(frozen=True)
class Canary:
    name: str
    guards: tuple[str, ...]  # the version names (``flatlib.keys``) a change of its numbers needs bumped
    fn: Callable[[], dict]


CANARIES: dict[str, Canary] = {}


def canary(name: str, *guards: str):
    def wrap(fn):
        CANARIES[name] = Canary(name, guards, fn)
        return fn
    return wrap


def _register_all() -> None:
    """Register every canary (``flatlib.experiments.canaries``). The homes of the measure and
    certificate versions register those with ``keys`` when imported."""
    from flatlib.experiments import canaries, certificates  # noqa: F401

    canaries.register_measures()


# ------------------------------------------------------------------------------ run and compare

@contextlib.contextmanager
def _isolated():
    """A temporary results store, one thread, and the canary network recomputed afresh."""
    from flatlib.experiments.canaries import canary_network

    saved = os.environ.get("FLATLIB_CACHE")
    canary_network.cache_clear()
    with tempfile.TemporaryDirectory(prefix="flatlib-fingerprints-") as tmp:
        os.environ["FLATLIB_CACHE"] = tmp
        try:
            with one_thread(), torch.random.fork_rng(devices=[]):
                yield
        finally:
            canary_network.cache_clear()
            if saved is None:
                os.environ.pop("FLATLIB_CACHE", None)
            else:
                os.environ["FLATLIB_CACHE"] = saved


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    return value


def compute(names=None) -> dict:
    """``{canary: {"versions": {guard: current version}, "values": {...}}}`` for ``names`` (default
    all), computed afresh in isolation."""
    _register_all()
    names = list(CANARIES) if names is None else list(names)
    unknown = sorted(set(names) - set(CANARIES))
    if unknown:
        raise KeyError(f"unknown canaries {unknown}; known: {sorted(CANARIES)}")
    out = {}
    with _isolated():
        for name in names:
            canary_ = CANARIES[name]
            values = _plain(canary_.fn())  # first: it imports the homes that register its guards' versions
            out[name] = {"versions": {g: keys.current(g) for g in canary_.guards}, "values": values}
    return out


def recorded(path: Path = PATH) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def record(path: Path = PATH, names=None) -> dict:
    """Recompute the canaries (``names``, default all) and write them into ``path``."""
    found = recorded(path)
    found.update(compute(names))
    found = {k: found[k] for k in sorted(found)}
    Path(path).write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    return found


def _differences(old, new, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = [f"{where}{k} is new" for k in sorted(set(new) - set(old))]
        out += [f"{where}{k} is gone" for k in sorted(set(old) - set(new))]
        for k in sorted(set(old) & set(new)):
            out += _differences(old[k], new[k], f"{where}{k}.")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{where}{i}.")]
    name = where.rstrip(".")
    both_real = all(isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)) for v in (old, new))
    if both_real and (isinstance(old, float) or isinstance(new, float)):
        if math.isclose(old, new, rel_tol=RTOL, abs_tol=ATOL) or (math.isnan(old) and math.isnan(new)):
            return []
        return [f"{name}: {old!r} -> {new!r} (relative change {abs(new - old) / max(abs(old), 1e-300):.2g})"]
    return [] if old == new else [f"{name}: {old!r} -> {new!r}"]


def check(recorded_: dict, computed: dict) -> list[str]:
    """The problems of ``computed`` against ``recorded_`` (both as ``compute`` returns them), one
    message per canary; empty when every canary agrees."""
    problems = []
    for name, now in computed.items():
        before = recorded_.get(name)
        if before is None:
            problems.append(f"{name}: no recorded fingerprint; record it: python -m flatlib fingerprints --record")
            continue
        if before["versions"] != now["versions"]:
            moved = ", ".join(f"{g} {before['versions'].get(g)} -> {v}" for g, v in now["versions"].items()
                              if before["versions"].get(g) != v)
            problems.append(f"{name}: versions bumped ({moved}) but the fingerprint was not re-recorded; after a "
                            "deliberate change run: python -m flatlib fingerprints --record")
            continue
        moved = _differences(before["values"], now["values"])
        if moved:
            guards = ", ".join(f"{g} (now {v})" for g, v in now["versions"].items())
            problems.append(f"{name}: its numbers moved while its version did not: bump its version [{guards}], "
                            f"then re-record the fingerprints (python -m flatlib fingerprints --record). "
                            f"Moved: {'; '.join(moved[:5])}" + (f" and {len(moved) - 5} more" if len(moved) > 5
                                                                else ""))
    return problems
