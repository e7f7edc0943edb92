"""What a stored result means: its key is the normalised inputs, an explicit version of the
computation and the environment class that can change its numbers.

As TensorFlow Datasets' ``VERSION`` and lm-evaluation-harness's task versions, each computation
declares its version beside its code: a module's own computations as its ``VERSION`` (the
training recipe in ``flatlib.train``, the data subsets in ``flatlib.data``, ...), each measure as
``version=`` in the registry (``flatlib.measures.register``), each certificate kind in
``flatlib.certificates.VERSIONS``, each verdict rule in ``flatlib.claims.RULE_VERSIONS``. A
behaviour change bumps its version, which re-keys exactly the results it changes and makes
stale exactly the chapters that used it; a refactor (a moved helper, renamed locals, a new
option whose default keeps the old behaviour) bumps nothing and re-keys nothing.

Memory is not trusted with the bump: ``flatlib.fingerprints`` recomputes a small canary set of
every versioned computation and ``tests/test_fingerprints.py`` fails, naming the computation and
saying "bump its version", when its numbers move while its version did not.

The environment class is what can change the last bits of a number without any change of code:
the torch version (major.minor), the CPU's architecture and the instruction set torch dispatches
to (``torch.backends.cpu.get_cpu_capability()``: a cold re-run of the head-to-head chapter on an
AMD EPYC with AVX-512 moved 92 of 100 training losses against an Intel Xeon's), and for CUDA
the device and its compute capability. Results from two environment classes never share a key,
so a store shared between machines never mixes their numbers.

The source-closure hash of ``flatlib._version`` stays as provenance (in each stored entry and
each summary), not in any key.
"""
from __future__ import annotations

import dataclasses
import importlib
import platform
import sys
import typing
from typing import Callable

import torch

from flatlib.infrastructure import store

# Version names recorded in a summary: "module:flatlib.train", "measure:top_eigenvalue",
# "certificate:prior_at_init", "rule:C2". Only what a process used is recorded (``used``).
_NOTED: dict[str, int] = {}

# kind -> the version the code on hand declares for a name of that kind ("measure", "certificate",
# "rule"): each kind's home registers it (``register_kind``) when it is imported, so this module
# imports nothing above it.
_KINDS: dict[str, Callable[[str], int | None]] = {}


def torch_release() -> str:
    """torch's major.minor (``2.14``): a patch release keeps kernels; a minor one may not."""
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def environment(device: str = "cpu") -> dict:
    """The environment class of a computation on ``device``: torch major.minor, and the CPU's
    architecture and torch's dispatched instruction set, or for CUDA the device name and its
    compute capability. Part of every key; recorded in every summary."""
    env = {"torch": torch_release()}
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(dev)
            env["cuda"] = f"{torch.cuda.get_device_name(dev)} (sm_{major}{minor})"
        else:  # a CUDA result cannot be made here, so its key matches nothing made on a GPU
            env["cuda"] = "unavailable"
    else:
        env["cpu"] = f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
    return env


def normalise(value):
    """``value`` as canonical JSON data: numpy and torch scalars as Python numbers, tuples as
    lists, dict keys as strings; so the same meaning gives the same key."""
    if isinstance(value, dict):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _accepts(hint, kind: type) -> bool:
    return hint is kind or kind in typing.get_args(hint)


def coerce_fields(obj) -> None:
    """Give every field of the frozen dataclass ``obj`` its declared type where a value of
    another numeric type means the same: an int (or a numpy number) for a float field becomes a
    float, a numpy integer for an int field an int. So ``weight_decay=0`` and ``0.0``, or a numpy
    scalar and a float, make one config, one key. A bool is never taken for a number."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value, hint = getattr(obj, field.name), hints.get(field.name)
        if isinstance(value, bool) or value is None:
            continue
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, int) and not _accepts(hint, int) and _accepts(hint, float):
            value = float(value)
        object.__setattr__(obj, field.name, value)


def canonical(obj) -> dict:
    """The fields of dataclass ``obj`` that define its result, normalised. A field declared with
    ``metadata={"neutral": v}`` is an option added after results were stored, whose value ``v``
    keeps the old behaviour: at that value it is left out, so adding it re-keys nothing."""
    out = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if "neutral" in field.metadata and value == field.metadata["neutral"]:
            continue
        out[field.name] = normalise(value)
    return out


def note(name: str, version: int) -> int:
    """Record that this process used version ``version`` of computation ``name`` (``used``)."""
    _NOTED[name] = version
    return version


def module_versions() -> dict[str, int]:
    """``module:<VERSION_NAME> -> VERSION`` for every loaded flatlib module that declares one.

    The name is the module's ``VERSION_NAME``, not its import path: published summaries record
    ``module:flatlib.train``, and moving ``train`` into a sub-package must neither re-key its
    results nor make those chapters stale, so the name stays at its historical value."""
    found = {}
    for module in list(sys.modules.values()):
        name, version = getattr(module, "VERSION_NAME", None), getattr(module, "VERSION", None)
        if isinstance(name, str) and isinstance(version, int) and name.startswith("flatlib."):
            found[f"module:{name}"] = version
    return dict(sorted(found.items()))


def register_kind(kind: str, lookup: Callable[[str], int | None]) -> None:
    """Declare how ``current`` finds the version of a ``kind:name``: ``lookup(name)`` returns it,
    or None (or raises KeyError) when ``name`` no longer exists. The module that owns the kind's
    versions (the measure registry, the certificate kinds, the verdict rules) calls this when it
    is imported."""
    _KINDS[kind] = lookup


def used() -> dict[str, int]:
    """Every version this process used: the loaded modules' own ``VERSION`` and each measure,
    certificate kind and verdict rule it computed with. A chapter's summary records it, and
    ``flatlib.runner.stale`` calls the chapter stale when one of them has changed since."""
    return dict(sorted({**module_versions(), **_NOTED}.items()))


def current(name: str) -> int | None:
    """The version the code on hand declares for ``name`` (a name of ``used``), or None if it
    no longer exists. A module is found by its ``VERSION_NAME`` among the loaded modules, else
    imported by that (historical) name, which ``flatlib/__init__.py`` maps to its home; a measure,
    certificate kind or verdict rule through its kind's ``register_kind`` lookup, so their home
    modules must be imported first (``flatlib.runner.staleness`` imports them)."""
    kind, _, what = name.partition(":")
    try:
        if kind == "module":
            for module in list(sys.modules.values()):
                if getattr(module, "VERSION_NAME", None) == what:
                    return getattr(module, "VERSION", None)
            module = importlib.import_module(what)
            return getattr(module, "VERSION", None) if getattr(module, "VERSION_NAME", None) == what else None
        if kind in _KINDS:
            return _KINDS[kind](what)
    except (ImportError, KeyError):
        return None
    return None


def digest(kind: str, inputs, versions: dict, env: dict) -> str:
    """The key (20 hex digits) of a result of ``kind`` computed from ``inputs`` by the
    computations at ``versions`` in environment class ``env``."""
    return store.digest({"kind": kind, "inputs": normalise(inputs), "versions": normalise(versions),
                         "environment": env})
