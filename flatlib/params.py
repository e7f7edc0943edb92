"""The valid range of a chapter parameter, declared in the manifest and checked before a
kernel starts.

A range is a small mapping (YAML in ``chapters.yml``):

* ``choices: [a, b]``: one of these values;
* ``min: x`` / ``max: y``: inclusive bounds; ``above: x``: a strict lower bound;
* for a list, ``each: {...}`` (a range every item must satisfy), ``length: [lo, hi]``
  (inclusive) and ``increasing: true`` (strictly).

A non-finite number (nan, inf) is refused whatever the range says.
"""
from __future__ import annotations

import math

KEYS = {"choices", "min", "max", "above", "each", "length", "increasing"}


class RangeError(ValueError):
    """A parameter value outside its declared range; the message gives the range."""


def describe(spec: dict) -> str:
    """The range in words, for error messages and ``python -m flatlib chapters``."""
    parts = []
    if "choices" in spec:
        parts.append("one of " + ", ".join(map(repr, spec["choices"])))
    if "above" in spec:
        parts.append(f"> {spec['above']:g}")
    if "min" in spec:
        parts.append(f">= {spec['min']:g}")
    if "max" in spec:
        parts.append(f"<= {spec['max']:g}")
    if "length" in spec:
        lo, hi = spec["length"]
        parts.append(f"{lo} to {hi} items" if lo != hi else f"{lo} items")
    if spec.get("increasing"):
        parts.append("strictly increasing")
    if "each" in spec:
        parts.append(f"each {describe(spec['each'])}")
    return ", ".join(parts) or "any value"


def validate_spec(name: str, spec) -> None:
    """Refuse a malformed range in the manifest."""
    if not isinstance(spec, dict) or not spec or set(spec) - KEYS:
        raise RangeError(f"the range of {name!r} must be a mapping with keys from {sorted(KEYS)}, got {spec!r}")
    if "length" in spec and (not isinstance(spec["length"], list) or len(spec["length"]) != 2):
        raise RangeError(f"the range of {name!r}: length must be [lo, hi], got {spec['length']!r}")
    if "each" in spec:
        validate_spec(f"{name} items", spec["each"])


def _finite(name: str, value) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise RangeError(f"Parameter {name!r} is {value!r}: non-finite values are refused.")


def check(name: str, value, spec: dict) -> None:
    """Raise :class:`RangeError` if ``value`` is outside ``spec``."""
    def fail():
        raise RangeError(f"Parameter {name!r} = {value!r} is out of range: it must be {describe(spec)}.")

    if isinstance(value, (list, tuple)):
        for item in value:
            _finite(name, item)
        if "length" in spec and not spec["length"][0] <= len(value) <= spec["length"][1]:
            fail()
        if spec.get("increasing") and any(b <= a for a, b in zip(value, value[1:])):
            fail()
        for item in value:
            if "each" in spec:
                try:
                    check(f"{name} item", item, spec["each"])
                except RangeError:
                    fail()
        return
    _finite(name, value)
    if "choices" in spec and value not in spec["choices"]:
        fail()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if ("min" in spec and value < spec["min"]) or ("max" in spec and value > spec["max"]) \
                or ("above" in spec and value <= spec["above"]):
            fail()
