import pytest
import torch

from flatlib import cache
from flatlib import train as ftrain
from flatlib.train import TrainConfig

TINY = dict(dataset="mnist", n=128, widths=(16,), batch_size=32, epochs=1, target_train_acc=None)


@pytest.fixture
def counted_training(monkeypatch):
    calls = []
    real = ftrain.train

    def counting(config, progress=False):
        calls.append(config.seed)
        return real(config)

    monkeypatch.setattr(ftrain, "train", counting)
    return calls


def test_second_request_is_served_from_the_cache_with_identical_weights(counted_training):
    first = cache.trained(TrainConfig(**TINY))
    second = cache.trained(TrainConfig(**TINY))
    assert counted_training == [0]
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k])
    for k, v in first.initial_state.items():
        assert torch.equal(v, second.initial_state[k])
    assert second.history == first.history


def _killed_at_seed(monkeypatch, seed, run):
    """Run ``run()`` with the process 'killed' (KeyboardInterrupt) while saving network ``seed``."""
    real_save = cache.save_network

    def killed(result):
        if result.config.seed == seed:
            raise KeyboardInterrupt
        return real_save(result)

    monkeypatch.setattr(cache, "save_network", killed)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(cache, "save_network", real_save)


def test_interrupted_sweep_resumes_and_trains_only_what_is_missing(counted_training, monkeypatch):
    configs = [TrainConfig(**{**TINY, "seed": s}) for s in range(5)]
    _killed_at_seed(monkeypatch, 3, lambda: cache.sweep(configs))
    counted_training.clear()
    results = cache.sweep(configs)
    assert counted_training == [3, 4]
    assert [r.config.seed for r in results] == list(range(5))
    assert not list(cache.cache_dir().rglob("*.tmp"))


def test_corrupt_network_entry_is_retrained(counted_training):
    config = TrainConfig(**TINY)
    cache.trained(config)
    path = cache._network_path(config)
    path.write_bytes(path.read_bytes()[:100])
    cache.trained(config)
    assert counted_training == [0, 0]


def test_measures_are_memoised_per_network_and_options():
    config = TrainConfig(**TINY)
    calls = []

    def compute():
        calls.append(1)
        return 1.5

    assert cache.measure(config, "m", compute, tau=0.1) == 1.5
    assert cache.measure(config, "m", compute, tau=0.1) == 1.5
    assert len(calls) == 1
    cache.measure(config, "m", compute, tau=0.2)
    cache.measure(config, "m", compute, version="2", tau=0.1)
    cache.measure(TrainConfig(**{**TINY, "seed": 9}), "m", compute, tau=0.1)
    assert len(calls) == 4


def test_network_table_killed_halfway_resumes_without_retraining_or_remeasuring(counted_training, monkeypatch):
    from flatlib import measures

    configs = [TrainConfig(**{**TINY, "seed": s}) for s in range(4)]
    measured = []
    real = measures.MEASURES["simplicity_l2"]
    monkeypatch.setitem(measures.MEASURES, "simplicity_l2", measures.Measure(
        "simplicity_l2", real.family, real.invariant, lambda model, data: measured.append(1) or real(model, data)))
    _killed_at_seed(monkeypatch, 2, lambda: cache.network_table(configs, names=["simplicity_l2"], progress=False))
    assert counted_training == [0, 1, 2] and len(measured) == 2
    counted_training.clear()
    measured.clear()
    table = cache.network_table(configs, names=["simplicity_l2"], progress=False)
    assert counted_training == [2, 3] and len(measured) == 2
    assert list(table["seed"]) == [0, 1, 2, 3]
    assert {"train_acc", "test_acc", "test_loss", "gap", "simplicity_l2", "status", "epochs"} <= set(table.columns)
    assert (table["gap"] == table["train_acc"] - table["test_acc"]).all()
    again = cache.network_table(configs, names=["simplicity_l2"], progress=False)
    assert counted_training == [2, 3] and len(measured) == 2
    assert again.drop(columns="train_time_s").equals(table.drop(columns="train_time_s"))


def test_network_table_refuses_unknown_measures_and_stray_options():
    with pytest.raises(ValueError, match="unknown measure"):
        cache.network_table([TrainConfig(**TINY)], names=["flatness_of_vibes"])
    with pytest.raises(ValueError, match="not being computed"):
        cache.network_table([TrainConfig(**TINY)], names=["simplicity_l2"], options={"top_eigenvalue": {}})


def test_network_table_evaluates_each_split_once_per_network(monkeypatch):
    from flatlib import data

    configs = [TrainConfig(**{**TINY, "seed": s}) for s in range(2)]
    networks = [cache.trained(c) for c in configs]  # train first: training evaluates too
    calls = []
    real = ftrain.evaluate
    monkeypatch.setattr(ftrain, "evaluate", lambda model, x, y: calls.append(len(y)) or real(model, x, y))
    table = cache.network_table(configs, names=[], progress=False)
    assert sorted(calls) == [128, 128, 10000, 10000]  # train and test split of each network, once each
    test = real(networks[1].model, *data.load("mnist", "test"))
    assert (table.loc[1, "test_loss"], table.loc[1, "test_acc"]) == (test["loss"], test["acc"])
    cache.network_table(configs, names=[], progress=False)
    assert len(calls) == 4
