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
