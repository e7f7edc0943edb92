import dataclasses
import math

import pytest
import torch
from torch import nn

from flatlib import data, models
from flatlib import train as ftrain
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
               "device": "cuda", "target_train_loss": 0.01, "patience": 3, "lr_decay": 0.1, "lr_decays": 3}
    assert set(changed) == {f.name for f in dataclasses.fields(TrainConfig)}
    needs = {"lr_decay": {"patience": 4}}  # a decay needs a patience (a patience of 4: not the patience row's)
    keys = {TrainConfig(**{**TINY, **needs.get(name, {}), name: value}).key() for name, value in changed.items()}
    assert len(keys) == len(changed) and TrainConfig(**TINY).key() not in keys


def test_config_keys_mean_the_same_for_the_same_meaning():
    """0 and 0.0, a numpy scalar and a float, a list and a tuple of widths: one config, one key."""
    import numpy as np

    base = TrainConfig(**TINY, weight_decay=0.0, lr=0.05)
    for same in (TrainConfig(**{**TINY, "widths": [32]}, weight_decay=0, lr=0.05),
                 TrainConfig(**TINY, weight_decay=np.float64(0.0), lr=np.float64(0.05)),
                 TrainConfig(**{**TINY, "widths": (np.int64(32),), "n": np.int64(256)}, weight_decay=0.0, lr=0.05)):
        assert same == base and same.key() == base.key()
    assert TrainConfig(**TINY, lr=0.050001).key() != base.key()


@pytest.mark.parametrize("widths", [(16.5,), (True,), ("16",)])
def test_widths_that_are_not_whole_numbers_are_refused(widths):
    with pytest.raises(ValueError, match="widths must be whole numbers"):
        TrainConfig(**{**TINY, "widths": widths})


def test_config_key_carries_the_environment_class(monkeypatch):
    """Another instruction set or torch release (faked) gives another key: a network trained on an
    AVX2 machine is never served to an AVX-512 one."""
    import torch

    config = TrainConfig(**TINY)
    here = config.key()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "FAKE_ISA")
    assert config.key() != here
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    assert config.key() != here
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", torch.__version__.split("+")[0].rsplit(".", 1)[0] + ".99")
    assert config.key() == here  # a patch release keeps the key


def test_a_network_stored_under_another_cpu_capability_is_not_served(monkeypatch):
    import torch

    from flatlib import study

    config = TrainConfig(**TINY)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "FAKE_ISA")
    study.save_network(ftrain.train(config))
    assert study.load_network(config) is not None
    monkeypatch.undo()
    assert study.load_network(config) is None


def test_the_patience_exit_returns_the_weights_of_the_epoch_with_the_lowest_training_loss():
    """The oracle is training itself: the same config stopped by the epoch cap at the restored
    epoch gives, bit for bit, the weights the patience exit returned; the last epoch's differ."""
    recipe = dict(TINY, lr=0.5, epochs=60, target_train_loss=1e-9)
    result = ftrain.train(TrainConfig(**recipe, patience=2))
    last = result.history[-1]
    assert result.stopped_by == "patience" and last["restored_epoch"] < len(result.history)
    losses = [h["train_loss"] for h in result.history]
    assert last["restored_epoch"] == 1 + losses.index(min(losses)) and last["restored_train_loss"] == min(losses)
    best = ftrain.train(TrainConfig(**{**recipe, "epochs": last["restored_epoch"]}))
    final = ftrain.train(TrainConfig(**{**recipe, "epochs": len(result.history)}))
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, best.model.state_dict()[name]), name
    assert any(not torch.equal(v, final.model.state_dict()[k]) for k, v in result.model.state_dict().items())
    assert ftrain.evaluate(result.model, *_train_split(recipe))["loss"] == pytest.approx(min(losses), rel=1e-6)


def _train_split(recipe):
    ds = data.load(recipe["dataset"], "train", n=recipe["n"])
    return ds.images, ds.labels


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


def test_a_plateau_lowers_the_learning_rate_before_it_ends_training(monkeypatch):
    """Patience 2, two decays by 0.1: the learning rate the optimiser steps with, read off the
    optimiser itself, falls at each plateau, and the third plateau ends training."""
    import torch.optim

    _scripted_losses(monkeypatch, [1.0, 0.9, 0.95, 0.95, 0.8, 0.85, 0.85, 0.86, 0.87, 0.1])
    seen = []
    real_step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: seen.append(self.param_groups[0]["lr"])
                        or real_step(self, *a, **k))
    config = TrainConfig(**{**TINY, "n": 64, "epochs": 10, "patience": 2, "lr_decay": 0.1, "lr_decays": 2})
    result = train(config)
    steps = len(seen) // len(result.history)  # optimiser steps per epoch
    per_epoch = [seen[i * steps] for i in range(len(result.history))]
    assert per_epoch == pytest.approx([0.05] * 4 + [0.005] * 3 + [0.0005] * 2)
    assert [h.get("event_lr") for h in result.history].count(None) == 7
    assert result.history[3]["event_lr"] == "learning rate x0.1 (decay 1)"
    assert len(result.history) == 9 and result.stopped_by == "patience"
    assert result.history[-1]["restored_epoch"] == 5  # the best loss, 0.8


@pytest.mark.parametrize("bad", [{"lr_decay": 1.0, "patience": 3}, {"lr_decay": 0.1},
                                 {"lr_decay": 0.1, "patience": 3, "lr_decays": 0}])
def test_a_decay_needs_a_factor_below_one_a_patience_and_a_count(bad):
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(**{**TINY, **bad})


def test_a_new_option_at_its_default_leaves_the_key_as_it_was():
    from flatlib import keys

    config = TrainConfig(**TINY)
    assert "lr_decay" not in keys.canonical(config) and "lr_decays" not in keys.canonical(config)
    assert TrainConfig(**TINY, patience=3, lr_decay=0.1).key() != TrainConfig(**TINY, patience=3).key()


def test_a_loss_that_explodes_but_stays_finite_is_marked_diverged():
    # Adam at lr 1e9 leaves a finite loss of ~1e9 nats at chance accuracy: the old loop called that "ok"
    result = train(TrainConfig(**{**TINY, "optimizer": "adam", "lr": 1e9}))
    assert result.status == "diverged" and result.stopped_by == "diverged"
    assert result.history[-1]["event"].startswith("loss exploded")
