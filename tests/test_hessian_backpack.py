"""flatlib.hessian.diagonal against an established library: BackPACK's DiagHessian (Dangel,
Kunstner & Hennig 2020), which backpropagates the exact Hessian diagonal by its own code."""
import copy

import pytest
import torch
import torch.nn as nn
from backpack import backpack, extend
from backpack.extensions import DiagHessian

from flatlib import hessian, models

# BackPACK's hooks on a network whose inputs need no gradient; harmless for the diagonal
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")


def _backpack_diagonal(model, x, y):
    model = extend(copy.deepcopy(model))
    loss = extend(nn.CrossEntropyLoss())(model(x), y)
    with backpack(DiagHessian()):
        loss.backward()
    return torch.cat([p.diag_h.detach().reshape(-1) for p in model.parameters()])


def _data(shape, n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=gen, dtype=torch.float64), torch.randint(0, 10, (n,), generator=gen)


def test_the_mlp_diagonal_is_backpacks():
    torch.manual_seed(0)
    model = models.mlp((24, 16), in_features=49).double()
    x, y = _data((1, 7, 7))
    ours = hessian.diagonal(model, (x, y), batch_size=20)  # batches of 20, 20, 20, 4
    torch.testing.assert_close(ours, _backpack_diagonal(model, x, y), rtol=1e-10, atol=1e-14)


def test_the_float32_mlp_diagonal_is_backpacks_to_float32_rounding():
    torch.manual_seed(2)
    model = models.mlp((32, 16), in_features=49)
    x, y = _data((1, 7, 7))
    x = x.float()
    ours = hessian.diagonal(model, (x, y), batch_size=20)
    assert ours.dtype == torch.float32
    theirs = _backpack_diagonal(model, x, y)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6 * theirs.abs().max().item())


def test_the_cnn_diagonal_is_backpacks():
    torch.manual_seed(1)
    model = models.cnn((3, 4), hidden=8).double()
    x, y = _data((1, 28, 28), n=12)
    torch.testing.assert_close(hessian.diagonal(model, (x, y)), _backpack_diagonal(model, x, y), rtol=1e-10,
                               atol=1e-14)
