import dataclasses
import math

import pytest
import torch
from torch import nn

from flatlib import models
from flatlib.train import TrainConfig, train

TINY = dict(dataset="mnist", n=256, widths=(32,), batch_size=32, epochs=2, target_train_acc=None)


def test_mlp_and_cnn_shapes_and_no_batchnorm_by_default():
    x = torch.rand(5, 1, 28, 28)
    for model in (models.mlp((64, 32)), models.cnn((4, 8), 16)):
        assert model(x).shape == (5, 10)
        assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
    assert models.num_params(models.mlp((512, 512))) == 784 * 512 + 512 + 512 * 512 + 512 + 5130


def test_same_config_gives_bit_identical_weights_on_cpu():
    a, b = train(TrainConfig(**TINY)), train(TrainConfig(**TINY))
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert a.history == [dict(h) for h in b.history]


@pytest.mark.parametrize("change", [{"seed": 1}, {"data_seed": 1}, {"augment": True}, {"sam_rho": 0.05},
                                    {"weight_decay": 1e-2}, {"optimizer": "adam", "lr": 1e-3}])
def test_each_config_field_changes_the_weights(change):
    base = train(TrainConfig(**TINY)).model.state_dict()
    other = train(TrainConfig(**{**TINY, **change})).model.state_dict()
    assert not all(torch.equal(base[k], other[k]) for k in base)
    assert TrainConfig(**TINY).key() != TrainConfig(**{**TINY, **change}).key()


def test_training_fits_a_small_subset_and_stops_at_the_target():
    result = train(TrainConfig(dataset="mnist", n=256, widths=(128,), batch_size=32, epochs=50, lr=0.05,
                               target_train_acc=1.0))
    assert result.status == "ok"
    assert result.history[-1]["train_acc"] == 1.0
    assert len(result.history) < 50
    assert result.stopped_by == "target_train_acc"


def test_divergence_is_recorded_not_raised():
    result = train(TrainConfig(**{**TINY, "lr": 1e12, "momentum": 0.0}))
    assert result.status == "diverged" and result.diverged and result.stopped_by == "diverged"
    assert result.history[-1]["event"] == "non-finite loss"
    assert not math.isfinite(result.history[-1].get("loss", result.history[-1].get("train_loss")))


@pytest.mark.parametrize("bad,match", [({"optimizer": "rmsprop"}, "optimizer"), ({"lr": -1.0}, "lr"),
                                       ({"dataset": "cifar"}, "dataset"), ({"batch_size": 1000}, "exceeds"),
                                       ({"target_train_acc": 1.5}, "target_train_acc"),
                                       ({"target_train_loss": 0.0}, "target_train_loss"),
                                       ({"patience": 0}, "patience")])
def test_impossible_configs_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**TINY, **bad})


def test_config_key_is_stable_and_covers_every_field():
    assert TrainConfig(**TINY).key() == TrainConfig(**TINY).key()
    assert TrainConfig(**TINY).key() != TrainConfig(**{**TINY, "device": "cuda"}).key()
    changed = {"dataset": "fashion_mnist", "n": 512, "data_seed": 5, "arch": "cnn", "widths": (8, 16),
               "optimizer": "adam", "lr": 0.01, "momentum": 0.5, "batch_size": 16, "epochs": 3,
               "target_train_acc": 0.9, "weight_decay": 1e-4, "sam_rho": 0.1, "augment": True, "seed": 4,
               "device": "cuda", "target_train_loss": 0.01, "patience": 3}
    assert set(changed) == {f.name for f in dataclasses.fields(TrainConfig)}
    keys = {TrainConfig(**{**TINY, name: value}).key() for name, value in changed.items()}
    assert len(keys) == len(changed) and TrainConfig(**TINY).key() not in keys


def test_config_key_hashes_the_config_and_the_training_code():
    """The key, computed here by hand: every field, and the version of train.py with every
    flatlib module it imports (tests/test_study.py checks that an edit to any of them changes it)."""
    import hashlib
    import json

    from flatlib._version import code_version

    config = TrainConfig(**TINY)
    payload = json.dumps({"config": config.to_dict(), "code": code_version("flatlib.train")}, sort_keys=True)
    assert config.key() == hashlib.sha256(payload.encode()).hexdigest()[:20]


def _scripted_losses(monkeypatch, losses):
    """Make the evaluation at initialisation report a loss of 2.3 nats (chance on ten classes)
    and every end-of-epoch evaluation the next loss in ``losses``."""
    from flatlib import train as ftrain

    script = iter([2.3, *losses])
    monkeypatch.setattr(ftrain, "evaluate", lambda model, x, y: {"loss": next(script), "acc": 0.5})


@pytest.mark.parametrize("losses,config,epochs,event,stopped_by", [
    # the first epoch at or below the target ends training
    ([0.9, 0.5, 0.02, 0.01, 0.005], {"target_train_loss": 0.01}, 4, "reached target_train_loss", "target_train_loss"),
    # 0.5 is the best; 0.6, 0.5 (not a new minimum), 0.7 make three epochs without one
    ([0.9, 0.5, 0.6, 0.5, 0.7, 0.1], {"patience": 3}, 5, "training loss stopped improving", "patience"),
    ([0.9, 0.5, 0.6, 0.4, 0.7, 0.1], {"patience": 3}, 6, None, "epoch cap"),  # 0.4 resets the count
])
def test_loss_based_stopping_rules(monkeypatch, losses, config, epochs, event, stopped_by):
    _scripted_losses(monkeypatch, losses)
    result = train(TrainConfig(**{**TINY, "epochs": 6, **config}))
    assert len(result.history) == epochs
    assert result.history[-1].get("event") == event
    assert result.stopped_by == stopped_by


def test_a_loss_that_explodes_but_stays_finite_is_marked_diverged():
    # Adam at lr 1e9 leaves a finite loss of ~1e9 nats at chance accuracy: the old loop called that "ok"
    result = train(TrainConfig(**{**TINY, "optimizer": "adam", "lr": 1e9}))
    assert result.status == "diverged" and result.stopped_by == "diverged"
    assert result.history[-1]["event"].startswith("loss exploded")
