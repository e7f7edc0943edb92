"""What the tests check flatlib against: the dense Hessian formed by autograd, the tiny float64
networks it is cheap to form on, and trained networks cast to float64.

As in curvlinops, every matrix-free curvature quantity is compared with the dense matrix on a
problem small enough to build it; ``dense_hessian`` shares no code with flatlib, so agreement
is evidence, not a tautology."""
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call

from flatlib import data as fdata
from flatlib import models
from flatlib.train import TrainConfig, train


def dense_hessian(model, data, loss=F.cross_entropy) -> torch.Tensor:
    """The p x p Hessian d^2 L / dw^2 of L(w) = ``loss(model(x), y)`` (default: the mean
    cross-entropy) on ``data = (x, y)``, where w is every tensor of ``model.parameters()``,
    flattened and concatenated in that order (the order flatlib.hessian uses).

    Computed by torch.autograd.functional.hessian on a functional_call of the model, with no
    flatlib code involved: the oracle for hvp, top_eigenvalues, power_iteration, trace,
    spectral_density and diagonal, and for the Hessian-based measures. The model must be
    float64, so that tolerances test the algorithms and not float32 rounding."""
    if any(p.dtype != torch.float64 for p in model.parameters()):
        raise ValueError("dense_hessian is an oracle only in float64; call model.double() first")
    x, y = data
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(w):
        pieces = torch.split(w, [shape.numel() for shape in shapes])
        params = {name: piece.reshape(shape) for name, piece, shape in zip(names, pieces, shapes)}
        return loss(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat)


def tiny_mlp(n: int = 40, seed: int = 0):
    """A 6-5-4-3 ReLU MLP (``models.mlp``, p = 74) in float64 and ``(x, y)``: ``n`` standard
    normal points in R^6 with uniform labels in 3 classes, all drawn after
    ``torch.manual_seed(seed)``. Small enough for ``dense_hessian`` and ``torch.linalg.eigvalsh``."""
    torch.manual_seed(seed)
    model = models.mlp((5, 4), in_features=6, num_classes=3).double()
    x = torch.randn(n, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return model, (x, y)


def tiny_cnn(n: int = 6, seed: int = 0):
    """A CNN with 2 and 3 channels and 4 hidden units (``models.cnn((2, 3), hidden=4)``,
    p = 719) in float64 and ``(x, y)``: ``n`` uniform 28 x 28 images with uniform labels in 10
    classes, all drawn after ``torch.manual_seed(seed)``: the convolutional case for
    ``dense_hessian``."""
    torch.manual_seed(seed)
    model = models.cnn((2, 3), hidden=4).double()
    x = torch.rand(n, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (n,))
    return model, (x, y)


def trained_float64(config: TrainConfig):
    """``train(config)``'s network, its training subset and its initial state dict, the network
    and the initial state cast to float64 (so that invariance and bounds are tested, not
    float32 rounding); the images stay float32, as the measures receive them."""
    result = train(config)
    subset = fdata.load(config.dataset, "train", n=config.n, seed=config.data_seed)
    init = {name: value.double() for name, value in result.initial_state.items()}
    return result.model.double(), subset, init


def paired_table(gaps: dict[int, list[float]], base: float = 0.9) -> pd.DataFrame:
    """The oracle for the batch-sweep statistics and the C4 rule: a per-network table whose
    small-batch accuracy exceeds the large-batch one by the given per-seed ``gaps``, per n."""
    rows = []
    for n, per_seed in gaps.items():
        for seed, gap in enumerate(per_seed):
            rows.append({"n": n, "seed": seed, "regime": "large", "test_acc": base + 0.001 * seed})
            rows.append({"n": n, "seed": seed, "regime": "small", "test_acc": base + 0.001 * seed + gap})
    return pd.DataFrame(rows)
