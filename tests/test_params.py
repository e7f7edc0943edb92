"""flatlib.params: declared parameter ranges, checked before a kernel starts."""
import pytest

from flatlib import params


@pytest.mark.parametrize("value,spec", [
    (5, {"min": 1, "max": 10}), (1, {"min": 1}), (0.5, {"above": 0}), ("mnist", {"choices": ["mnist", "x"]}),
    ([8, 8], {"each": {"min": 1}, "length": [1, 4]}), ([1.0, 2.0], {"increasing": True}),
])
def test_values_inside_their_range_pass(value, spec):
    params.check("p", value, spec)


@pytest.mark.parametrize("value,spec,words", [
    (0, {"min": 1, "max": 10}, ">= 1, <= 10"), (11, {"max": 10}, "<= 10"), (0.0, {"above": 0}, "> 0"),
    ("cifar", {"choices": ["mnist", "fashion_mnist"]}, "one of 'mnist', 'fashion_mnist'"),
    ([], {"length": [1, 8]}, "1 to 8 items"), ([8, 0], {"each": {"min": 1}}, "each >= 1"),
    ([2.0, 1.0], {"increasing": True}, "strictly increasing"),
])
def test_values_outside_their_range_are_refused_with_the_range(value, spec, words):
    with pytest.raises(params.RangeError, match="out of range") as err:
        params.check("p", value, spec)
    assert words in str(err.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, float("nan")]])
def test_non_finite_values_are_refused_whatever_the_range(value):
    with pytest.raises(params.RangeError, match="non-finite values are refused"):
        params.check("lr", value, {"min": 0})


@pytest.mark.parametrize("spec", [{}, {"minimum": 1}, {"length": 3}, {"each": {"bogus": 1}}, [1, 2]])
def test_a_malformed_range_is_refused(spec):
    with pytest.raises(params.RangeError, match="range of"):
        params.validate_spec("p", spec)


VALUES = {"n": 200, "batch_size": 64, "widths": [16, 32, 8], "arch": "cnn", "rules": ["exchangeable", "parity2"],
          "lr": 0.5, "bits": 5, "flag": False}


@pytest.mark.parametrize("expression", [
    "batch_size <= n", "2 < len(widths)", "2 <= len(widths) <= 5", "n + max(widths) * 2",
    "arch != 'cnn' or 2 <= len(widths) <= 5", "'exchangeable' in rules and 'parity3' not in rules",
    "2 ** bits - 1", "n // 3 % 7", "-lr / 2", "not flag", "widths[-1]", "widths[1:]", "sum(widths) / len(widths)",
    "min(widths) if flag else max(widths)", "[n, lr] == [200, 0.5]", "flag or n", "flag and n", "abs(-n)",
    "sorted(widths)", "all([n, lr])", "any([flag, 0])", "arch is not None",
])
def test_the_constraint_language_means_what_python_means(expression):
    # Python's own evaluator is the oracle, on expressions inside the small language
    assert params._evaluate(params._parse(expression), VALUES) == eval(expression, {}, dict(VALUES))


def test_a_constraint_that_fails_shows_its_message_with_the_values():
    c = params.constraint({"require": "batch_size <= n",
                           "message": "batch_size = {batch_size} exceeds n = {n}; at most {n - 0}, {widths}"})
    c.check({**VALUES, "batch_size": 100})
    with pytest.raises(params.ConstraintError, match=r"^batch_size = 300 exceeds n = 200; at most 200, \[16, 32, 8\]$"):
        c.check({**VALUES, "batch_size": 300})


def test_a_called_checker_refuses_in_its_own_words_and_cannot_change_the_values():
    c = params.constraint({"call": "finite.check_language(bits, rules, 40, bits, 2)"})
    values = dict(VALUES)
    with pytest.raises(params.ConstraintError, match="2\\^bits - 1 = 31"):
        c.check(values)
    assert values == VALUES


@pytest.mark.parametrize("spec", [
    {"require": "n > 1"}, {"message": "x"}, {"require": "n > 1", "message": 3}, {"call": "len(widths)"},
    {"call": "finite.check_language"}, {"require": "n > 1", "message": "{n +}"}, "n > 1",
    {"require": "max(**{'a': 1})", "message": "x"},
])
def test_a_malformed_constraint_is_refused(spec):
    with pytest.raises(params.ConstraintError, match="constraint"):
        params.constraint(spec)


@pytest.mark.parametrize("value,limit,words", [
    (list(range(20000)), 60, "(20000 items)"), (10 ** 400, 60, "(401 digits)"), (10 ** 30, 20, "(31 digits)"),
    pytest.param(10 ** 9999, 60, "about 10000 digits", id="too-long-for-decimal"),
    ("x" * 100000, 60, "(100000 characters)"), ([[1] * 1000] * 3, 60, "(3 items)"),
])
def test_shown_values_are_short_and_say_how_long_they_were(value, limit, words):
    text = params.shown(value, limit)
    assert len(text) <= limit + 25 and words in text, text


def test_shown_short_values_are_their_repr():
    for value in (16, [16, 16], "mnist", 0.05, None, True):
        assert params.shown(value) == repr(value)
