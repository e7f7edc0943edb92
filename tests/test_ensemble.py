"""flatlib.ensemble: networks trained as one vectorised ensemble equal the networks the loop
(flatlib.train.train) trains, member by member, to float tolerance: weights, histories, stopping
epochs, divergence and test predictions."""
import dataclasses

import pytest
import torch

from flatlib import data as fdata
from flatlib import ensemble, models
from flatlib import train as ftrain

BASE = ftrain.TrainConfig(dataset="mnist", n=300, widths=(16, 16), optimizer="sgd", lr=0.05, batch_size=50, epochs=4,
                          target_train_acc=None)


def _same_as_the_loop(configs, atol=1e-5):
    together = ensemble.train_ensemble(configs)
    test = fdata.load("mnist", "test", n=1000)
    for config, member in zip(configs, together):
        alone = ftrain.train(config)
        assert member.config == config
        assert member.status == alone.status
        assert [h.get("event") for h in member.history] == [h.get("event") for h in alone.history]
        assert len(member.history) == len(alone.history)
        for mine, theirs in zip(member.history, alone.history):
            for key in ("train_loss", "train_acc", "batch_loss", "loss"):
                if key in theirs:
                    assert mine[key] == pytest.approx(theirs[key], abs=atol, rel=atol)
        for name, value in alone.model.state_dict().items():
            torch.testing.assert_close(member.model.state_dict()[name], value, atol=atol, rtol=atol)
        for name, value in alone.initial_state.items():
            assert torch.equal(member.initial_state[name], value)
        agree = (models.predict(member.model, test.images).argmax(1) == models.predict(alone.model, test.images)
                 .argmax(1)).double().mean().item()
        assert agree >= 0.999
    return together


def test_an_sgd_ensemble_equals_the_loop_member_by_member():
    _same_as_the_loop([dataclasses.replace(BASE, seed=s) for s in (0, 1, 2)])


def test_an_adam_ensemble_with_weight_decay_equals_the_loop():
    _same_as_the_loop([dataclasses.replace(BASE, optimizer="adam", lr=1e-3, weight_decay=1e-4, seed=s)
                       for s in (3, 4)])


def test_members_stop_by_their_own_rules_at_their_own_epochs():
    configs = [dataclasses.replace(BASE, epochs=30, target_train_loss=0.25, patience=3, seed=s) for s in range(4)]
    together = _same_as_the_loop(configs)
    assert len({len(r.history) for r in together}) > 1  # they did stop at different epochs


def test_a_diverging_member_is_set_aside_as_the_loop_marks_it():
    configs = [dataclasses.replace(BASE, lr=50.0, seed=s) for s in (0, 1)]
    together = _same_as_the_loop(configs, atol=1e-3)  # at lr 50 rounding grows fast until the stop
    assert all(r.diverged for r in together)


@pytest.mark.parametrize("configs,match", [
    ([BASE, dataclasses.replace(BASE, lr=0.1, seed=1)], "differ in more than their seed"),
    ([BASE, BASE], "seeds repeat"),
    ([dataclasses.replace(BASE, sam_rho=0.05)], "SAM and augmentation"),
    ([], "at least one config"),
])
def test_configs_it_cannot_train_together_are_refused(configs, match):
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.train_ensemble(configs)


def test_groups_split_by_recipe_and_keep_order():
    a = [dataclasses.replace(BASE, seed=s) for s in (0, 1)]
    b = [dataclasses.replace(BASE, lr=0.1, seed=s) for s in (0, 1)]
    assert ensemble.groups([a[0], b[0], a[1], b[1], a[0]]) == [a, b]


def test_the_store_is_not_filled_from_cpu_ensembles():
    with pytest.raises(ensemble.EnsembleError, match="for CUDA configs"):
        ensemble.sweep([BASE])
