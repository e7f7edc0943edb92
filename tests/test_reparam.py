"""Function preservation of the reparameterisations, measured on the 10,000 MNIST test images."""
import pytest
import torch

from flatlib import data, models, reparam
from flatlib.train import TrainConfig, train


@pytest.fixture(scope="module")
def test_images():
    return data.load("mnist", "test").images


@pytest.fixture(scope="module")
def trained_mlp():
    return train(TrainConfig(n=512, widths=(64, 32), batch_size=64, epochs=3, target_train_acc=None)).model


def _agree(a, b, images):
    la, lb = models.predict(a, images), models.predict(b, images)
    changed = int((la.argmax(1) != lb.argmax(1)).sum())
    rel = ((la - lb).norm() / la.norm()).item()
    return changed, rel


@pytest.mark.parametrize("layer,alpha", [(0, 100.0), (1, 100.0), (0, 0.01), (1, 7.5)])
def test_alpha_scaling_preserves_predictions(trained_mlp, test_images, layer, alpha):
    scaled = reparam.alpha_scale(trained_mlp, layer, alpha)
    changed, rel = _agree(trained_mlp, scaled, test_images)
    assert changed == 0 and rel < 1e-5


def test_alpha_scaling_changes_the_weights_it_should(trained_mlp):
    scaled = reparam.alpha_scale(trained_mlp, 0, 10.0)
    first, second = reparam.weight_layers(scaled)[:2]
    orig_first, orig_second = reparam.weight_layers(trained_mlp)[:2]
    assert torch.allclose(first.weight, orig_first.weight * 10) and torch.allclose(first.bias, orig_first.bias * 10)
    assert torch.allclose(second.weight, orig_second.weight / 10)
    assert torch.equal(orig_first.weight, reparam.weight_layers(trained_mlp)[0].weight)  # input untouched


def test_random_neuron_scaling_preserves_predictions(trained_mlp, test_images):
    scaled = reparam.random_neuron_scale(trained_mlp, seed=3, log_range=3.0)
    changed, rel = _agree(trained_mlp, scaled, test_images)
    assert changed == 0 and rel < 1e-5
    norms = [reparam.weight_layers(m)[0].weight.norm(dim=1) for m in (scaled, trained_mlp)]
    ratio = norms[0] / norms[1]
    assert ratio.max() / ratio.min() > 10  # the scales really differ per unit


def test_permutation_preserves_predictions_exactly_up_to_summation_order(trained_mlp, test_images):
    permuted = reparam.random_permute(trained_mlp, seed=1)
    changed, rel = _agree(trained_mlp, permuted, test_images)
    assert changed == 0 and rel < 1e-6
    assert not torch.equal(permuted[1].weight, trained_mlp[1].weight)


def test_cnn_reparameterisations_preserve_predictions(test_images):
    torch.manual_seed(0)
    net = models.cnn((4, 6), 16)
    for new in (reparam.random_neuron_scale(net, seed=0), reparam.random_permute(net, seed=0),
                reparam.alpha_scale(net, 1, 50.0), reparam.alpha_scale(net, 2, 50.0)):
        changed, rel = _agree(net, new, test_images[:2000])
        assert changed == 0 and rel < 1e-5


def test_bad_reparameterisations_are_refused(trained_mlp):
    with pytest.raises(ValueError, match="positive"):
        reparam.alpha_scale(trained_mlp, 0, -2.0)
    with pytest.raises(ValueError, match="hidden layer"):
        reparam.alpha_scale(trained_mlp, 2, 2.0)
    with pytest.raises(ValueError, match="permutation"):
        reparam.permute(trained_mlp, 0, torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match="BatchNorm"):
        reparam.alpha_scale(models.mlp((8,), batchnorm=True), 0, 2.0)
