"""The valid range of a chapter parameter, declared in the manifest and checked before a
kernel starts.

A range is a small mapping (YAML in ``chapters.yml``):

* ``choices: [a, b]``: one of these values;
* ``min: x`` / ``max: y``: inclusive bounds; ``above: x``: a strict lower bound;
* for a list, ``each: {...}`` (a range every item must satisfy), ``length: [lo, hi]``
  (inclusive) and ``increasing: true`` (strictly).

A non-finite number (nan, inf) is refused whatever the range says.

A limit that involves several parameters is a *constraint*, declared beside the ranges as a
list of entries, checked in order once every value is in its range:

* ``{require: "<expression>", message: "<text>"}``: the expression must be true; the message
  says why not, and each ``{<expression>}`` in it is replaced by that expression's value;
* ``{call: "<module>.<function>(<arguments>)"}``: a checker of ``flatlib.<module>`` that raises
  ``ValueError`` naming the problem (for a limit that needs computing, such as whether a
  language can fit a training set).

Expressions are a small language, read with :mod:`ast` and interpreted here, never handed to
``eval``: parameter names, literals, lists and tuples, arithmetic, comparisons (``in`` too),
``and``/``or``/``not``, ``x if c else y``, indexing, and calls of ``len``, ``min``, ``max``,
``sum``, ``abs``, ``all``, ``any``, ``sorted`` or of a public function of a flatlib module. An
expression outside it is refused when the manifest is read.
"""
from __future__ import annotations

import ast
import copy
import importlib
import math
import operator
import re
from dataclasses import dataclass

import flatlib

KEYS = {"choices", "min", "max", "above", "each", "length", "increasing"}


class RangeError(ValueError):
    """A parameter value outside its declared range; the message gives the range."""


class ConstraintError(ValueError):
    """A constraint that does not hold (the message says why), or one the manifest misdeclares."""


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` for a message, at most about ``limit`` characters: a long list keeps its
    first items and says how many it has, a long number its first digits and how many it has,
    a long string its start and its length; so a 20,000-item list is not echoed back whole."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 13000:
        # beyond about 4,000 digits, Python refuses to write an int out in decimal
        return f"an integer of about {math.floor(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, (list, tuple)):
        head, used = [], 0
        for item in value:
            part = shown(item, limit // 2)
            if used + len(part) > limit // 2:
                break
            head.append(part)
            used += len(part) + 2
        opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
        return f"{opening}{', '.join(head + ['...'])}{closing} ({len(value)} items)"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{text[:12]}... ({len(text.lstrip('-'))} digits)"
    return f"{text[:limit]}... ({len(value) if isinstance(value, str) else len(text)} characters)"


def describe(spec: dict) -> str:
    """The range in words, for error messages and ``python -m flatlib chapters``."""
    parts = []
    if "choices" in spec:
        parts.append("one of " + ", ".join(map(repr, spec["choices"])))
    if "above" in spec:
        parts.append(f"> {_number(spec['above'])}")
    if "min" in spec:
        parts.append(f">= {_number(spec['min'])}")
    if "max" in spec:
        parts.append(f"<= {_number(spec['max'])}")
    if "length" in spec:
        lo, hi = spec["length"]
        parts.append(f"{lo} to {hi} items" if lo != hi else f"{lo} items")
    if spec.get("increasing"):
        parts.append("strictly increasing")
    if "each" in spec:
        parts.append(f"each {describe(spec['each'])}")
    return ", ".join(parts) or "any value"


def _number(x) -> str:
    """A bound as written: an integer whole (1000000, not 1e+06), a float in its short form."""
    return str(x) if isinstance(x, int) else f"{x:g}"


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
        raise RangeError(f"Parameter {name!r} is {shown(value)}: non-finite values are refused.")


def check(name: str, value, spec: dict) -> None:
    """Raise :class:`RangeError` if ``value`` is outside ``spec``."""
    def fail():
        raise RangeError(f"Parameter {name!r} = {shown(value)} is out of range: it must be {describe(spec)}.")

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


# ----------------------------------------------------------------------------- constraints

_FUNCTIONS = {f.__name__: f for f in (len, min, max, sum, abs, all, any, sorted)}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}
_NODES = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.List, ast.Tuple, ast.BoolOp, ast.And, ast.Or,
          ast.UnaryOp, ast.BinOp, ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.Call, ast.keyword,
          *_BINARY, *_UNARY, *_COMPARE)


@dataclass(frozen=True)
class Constraint:
    """One entry of a chapter's ``constraints`` (module docstring): ``expression`` must be true
    (``require``) or, called, raise no ValueError (``call``)."""

    expression: str
    message: str | None = None

    def check(self, values: dict) -> None:
        """Raise :class:`ConstraintError` if the constraint does not hold for ``values``."""
        values = copy.deepcopy(values)  # a checker of flatlib gets the values, never the caller's lists
        try:
            if self.message is None:
                _evaluate(_parse(self.expression), values)
            elif not _evaluate(_parse(self.expression), values):
                raise ConstraintError(re.sub(r"\{([^{}]+)\}",
                                             lambda m: shown(_evaluate(_parse(m.group(1)), values)), self.message))
        except ConstraintError:
            raise
        except ValueError as exc:  # a checker's refusal, in its own words
            raise ConstraintError(str(exc)) from None
        except (TypeError, ArithmeticError, LookupError) as exc:
            raise ConstraintError(f"the constraint {self.expression!r} cannot be evaluated "
                                  f"({type(exc).__name__}: {exc})") from None


def constraint(spec) -> Constraint:
    """A constraint as the manifest declares it, or :class:`ConstraintError` saying what is wrong
    with it (its form, or an expression outside the small language)."""
    if not (isinstance(spec, dict) and (set(spec) == {"require", "message"} or set(spec) == {"call"})
            and all(isinstance(v, str) for v in spec.values())):
        raise ConstraintError(f"a constraint is {{require: <expression>, message: <text>}} or "
                              f"{{call: <module>.<function>(...)}}, got {spec!r}")
    if "call" in spec:
        tree = _parse(spec["call"])
        if not isinstance(tree.body, ast.Call) or not isinstance(tree.body.func, ast.Attribute):
            raise ConstraintError(f"constraint {spec['call']!r}: call names a function of a flatlib module")
        return Constraint(spec["call"])
    _parse(spec["require"])
    for placeholder in re.findall(r"\{([^{}]+)\}", spec["message"]):
        _parse(placeholder)
    return Constraint(spec["require"], spec["message"])


def check_constraints(constraints, values: dict) -> None:
    """Check ``constraints`` in order; the first that does not hold raises ConstraintError."""
    for c in constraints:
        c.check(values)


def _parse(expression: str) -> ast.Expression:
    """``expression`` as a syntax tree, refused unless every node is of the small language."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConstraintError(f"constraint {expression!r} is not an expression: {exc.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES) and not (isinstance(node, ast.Attribute) and _is_callee(node, tree)):
            raise ConstraintError(f"constraint {expression!r}: {type(node).__name__} is outside the language "
                                  f"of constraints (flatlib/params.py)")
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise ConstraintError(f"constraint {expression!r}: the name {node.id!r} is refused")
        if isinstance(node, ast.Call):
            _callee(node.func, expression, resolve=False)
        if isinstance(node, ast.keyword) and node.arg is None:
            raise ConstraintError(f"constraint {expression!r}: ** is outside the language of constraints")
    return tree


def _is_callee(node: ast.Attribute, tree: ast.Expression) -> bool:
    return any(isinstance(call, ast.Call) and call.func is node for call in ast.walk(tree))


def _callee(func: ast.expr, expression: str, resolve: bool = True):
    """The function a call names: a builtin of ``_FUNCTIONS`` or ``<module>.<public function>``
    of a flatlib module (imported only when called)."""
    if isinstance(func, ast.Name) and func.id in _FUNCTIONS:
        return _FUNCTIONS[func.id]
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and not func.attr.startswith("_") \
            and not func.value.id.startswith("_") and func.value.id in flatlib.MODULES:
        return getattr(importlib.import_module(f"flatlib.{func.value.id}"), func.attr) if resolve else None
    raise ConstraintError(f"constraint {expression!r}: it may call {', '.join(_FUNCTIONS)} or a public function "
                          f"of a flatlib module, not {ast.unparse(func)}")


def _evaluate(node: ast.AST, names: dict):
    """The value of a parsed expression (``_parse`` has refused anything else) with ``names``."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, names)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ConstraintError(f"a constraint names {node.id!r}, which is not a parameter of the chapter; "
                                  f"parameters: {', '.join(names)}")
        return names[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_evaluate(e, names) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BoolOp):
        value = None
        for operand in node.values:  # short-circuit, as Python does: `arch != 'cnn' or len(widths) >= 2`
            value = _evaluate(operand, names)
            if bool(value) == isinstance(node.op, ast.Or):
                return value
        return value
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, names))
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, names)
        for op, right_node in zip(node.ops, node.comparators):
            right = _evaluate(right_node, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _evaluate(node.body if _evaluate(node.test, names) else node.orelse, names)
    if isinstance(node, ast.Subscript):
        return _evaluate(node.value, names)[_evaluate(node.slice, names)]
    if isinstance(node, ast.Slice):
        parts = (node.lower, node.upper, node.step)
        return slice(*(None if part is None else _evaluate(part, names) for part in parts))
    if isinstance(node, ast.Call):
        function = _callee(node.func, ast.unparse(node))
        return function(*(_evaluate(a, names) for a in node.args),
                        **{k.arg: _evaluate(k.value, names) for k in node.keywords})
    raise ConstraintError(f"{type(node).__name__} is outside the language of constraints")  # _parse refused it
