"""Trained networks, kept in ``flatlib.infrastructure.store``: each under ``TrainConfig.key()`` (its
normalised config, the versions of the data, the architectures and the training recipe, and the
environment class), with the source-closure hash of the training code as provenance. A network
the store has is loaded, never retrained; ``flatlib.study`` and ``flatlib.ensemble`` store the
networks they train here.
"""
from __future__ import annotations

from pathlib import Path

from flatlib.engine import train as ftrain
from flatlib.infrastructure import keys, store
from flatlib.infrastructure.provenance import code_version


def network_key(config: ftrain.TrainConfig) -> str:
    """The store key of the network of ``config``."""
    return f"networks/{config.key()}.pt"


def save_network(result: ftrain.TrainResult) -> Path:
    return store.put_torch(network_key(result.config), {
        "config": result.config.to_dict(),
        "state": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "initial_state": result.initial_state,
        "history": result.history,
        "status": result.status,
        "wall_time_s": result.wall_time_s,
        "provenance": {"code": code_version(ftrain.__name__), "versions": ftrain.versions(),
                       "environment": keys.environment(result.config.device)},
    })


def load_network(config: ftrain.TrainConfig) -> ftrain.TrainResult | None:
    """The stored network of ``config``, or None if it was never trained (or was corrupt)."""
    blob = store.get_torch(network_key(config))
    if blob is None:
        return None
    model = ftrain.init_model(config)
    model.load_state_dict(blob["state"])
    model.to(config.device).eval()
    return ftrain.TrainResult(config=config, model=model, initial_state=blob["initial_state"],
                              history=blob["history"], status=blob["status"],
                              wall_time_s=blob["wall_time_s"])


def trained(config: ftrain.TrainConfig) -> ftrain.TrainResult:
    """The network of ``config``: from the store if present, else trained and stored."""
    cached = load_network(config)
    if cached is not None:
        return cached
    result = ftrain.train(config)
    save_network(result)
    return result
