import pytest
import torch

from flatlib import data, hessian, measures, study
from flatlib.train import TrainConfig

CONFIG = TrainConfig(dataset="mnist", n=128, widths=(16, 16), batch_size=32, epochs=1, target_train_acc=None)


@pytest.fixture
def counted_diagonals(monkeypatch):
    calls = []
    real = hessian.diagonal
    monkeypatch.setattr(hessian, "diagonal", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    return calls


def test_both_exact_trace_measures_share_one_diagonal_with_unchanged_values(counted_diagonals):
    model = study.trained(CONFIG).model
    train_set = data.load("mnist", "train", n=CONFIG.n, seed=CONFIG.data_seed)
    trace = measures.MEASURES["hessian_trace"](model, train_set)
    rescaled = measures.MEASURES["hessian_trace_min_rescaling"](model, train_set)
    assert len(counted_diagonals) == 1
    fresh = hessian.diagonal(model, train_set, batch_size=1000)
    assert trace == fresh.sum().item()
    assert rescaled == measures.min_trace_over_rescaling(model, train_set).value
    assert len(counted_diagonals) == 2  # the direct call above; min_trace_over_rescaling reused the entry


def test_network_table_computes_the_diagonal_once_per_network(counted_diagonals):
    configs = [CONFIG, TrainConfig(**{**CONFIG.to_dict(), "seed": 1})]
    study.network_table(configs, names=["hessian_trace", "hessian_trace_min_rescaling"], progress=False)
    assert len(counted_diagonals) == 2


def test_a_changed_weight_or_other_data_or_batch_size_recomputes(counted_diagonals):
    model = study.trained(CONFIG).model
    train_set = data.load("mnist", "train", n=CONFIG.n, seed=CONFIG.data_seed)
    before = measures.exact_diagonal(model, train_set)
    with torch.no_grad():
        next(model.parameters()).add_(1)
    after = measures.exact_diagonal(model, train_set)
    assert len(counted_diagonals) == 2 and not torch.equal(before, after)
    assert torch.equal(after, hessian.diagonal(model, train_set, batch_size=1000))
    measures.exact_diagonal(model, train_set)
    assert len(counted_diagonals) == 3  # the direct call only
    other = data.load("mnist", "train", n=CONFIG.n, seed=CONFIG.data_seed)  # equal values, other tensors
    measures.exact_diagonal(model, other)
    measures.exact_diagonal(model, other, batch_size=64)
    assert len(counted_diagonals) == 5
