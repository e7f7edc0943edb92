"""Content-addressed store of trained networks and computed measures.

A network is stored under its ``TrainConfig.key()`` (the full config plus the training
code's version tag); a measure under a hash of (network key, measure name, options). Every
write goes to a temporary file in the same folder and is renamed into place, so an
interrupted sweep leaves either a complete entry or none, and re-running it trains only what
is missing.

The store lives in ``$FLATLIB_CACHE`` (default ``~/.cache/flatlib/results``).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch

from flatlib import train as ftrain
from flatlib._io import atomic_write


def cache_dir() -> Path:
    root = os.environ.get("FLATLIB_CACHE")
    if root:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flatlib" / "results"


def _network_path(config: ftrain.TrainConfig) -> Path:
    return cache_dir() / "networks" / f"{config.key()}.pt"


def save_network(result: ftrain.TrainResult) -> Path:
    path = _network_path(result.config)
    buf = io.BytesIO()
    torch.save({
        "config": result.config.to_dict(),
        "train_version": ftrain.TRAIN_VERSION,
        "state": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "initial_state": result.initial_state,
        "history": result.history,
        "status": result.status,
        "wall_time_s": result.wall_time_s,
    }, buf)
    atomic_write(path, buf.getvalue())
    return path


def load_network(config: ftrain.TrainConfig) -> ftrain.TrainResult | None:
    """The cached network of ``config``, or None if it was never trained (or is unreadable)."""
    path = _network_path(config)
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        path.unlink(missing_ok=True)  # a corrupt entry is retrained, not served
        return None
    model = ftrain.init_model(config)
    model.load_state_dict(blob["state"])
    model.to(config.device).eval()
    return ftrain.TrainResult(config=config, model=model, initial_state=blob["initial_state"],
                              history=blob["history"], status=blob["status"],
                              wall_time_s=blob["wall_time_s"])


def trained(config: ftrain.TrainConfig) -> ftrain.TrainResult:
    """The network of ``config``: from the cache if present, else trained and stored."""
    cached = load_network(config)
    if cached is not None:
        return cached
    result = ftrain.train(config)
    save_network(result)
    return result


def sweep(configs: Iterable[ftrain.TrainConfig], desc: str = "networks") -> list[ftrain.TrainResult]:
    """Train (or fetch) every config in order, with a progress bar; resumable."""
    from tqdm.auto import tqdm

    configs = list(configs)
    return [trained(c) for c in tqdm(configs, desc=desc)]


def _measure_path(config: ftrain.TrainConfig, name: str, options: dict) -> Path:
    payload = json.dumps({"network": config.key(), "measure": name, "options": options},
                         sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:20]
    return cache_dir() / "measures" / f"{name}-{digest}.json"


def measure(config: ftrain.TrainConfig, name: str, compute: Callable[[], float],
            version: str = "1", **options) -> float:
    """The value of measure ``name`` with ``options`` on the network of ``config``, memoised.

    ``version`` belongs to the measure's code: bump it when its numbers would change.
    """
    path = _measure_path(config, name, {**options, "_version": version})
    if path.is_file():
        try:
            return json.loads(path.read_text())["value"]
        except (ValueError, KeyError):
            path.unlink(missing_ok=True)
    value = float(compute())
    atomic_write(path, json.dumps({"measure": name, "options": options, "value": value}).encode())
    return value


def _measure_code_version() -> str:
    """A hash of the code that computes measures; part of every measure's cache key, so a
    changed measure is recomputed, never served stale."""
    from flatlib import data, hessian, measures, models, pacbayes

    digest = hashlib.sha256()
    for module in (data, hessian, measures, models, pacbayes):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def network_table(configs: Iterable[ftrain.TrainConfig], names: list[str] | None = None,
                  options: dict | None = None, progress: bool = True, desc: str = "networks"):
    """One row per config: its training outcome (status, epochs, the rule that stopped it,
    wall time), train and test loss and accuracy on the full test split, the train-test
    accuracy gap, and every measure in ``names`` (default: the whole registry) on the
    network's own training subset, with ``options[name]`` passed to measure ``name``.

    Networks and every number are memoised in the cache, one entry per network and measure,
    so an interrupted sweep resumes where it stopped and a repeated call trains and measures
    nothing."""
    import pandas as pd
    from tqdm.auto import tqdm

    from flatlib import data as fdata
    from flatlib import measures as fmeasures

    configs = list(configs)
    names = list(fmeasures.MEASURES) if names is None else list(names)
    unknown = sorted(set(names) - set(fmeasures.MEASURES))
    if unknown:
        raise ValueError(f"unknown measure(s) {unknown}; registered: {sorted(fmeasures.MEASURES)}")
    options = options or {}
    unused = sorted(set(options) - set(names))
    if unused:
        raise ValueError(f"options given for measure(s) {unused} that are not being computed")
    version = _measure_code_version()
    loaded: dict = {}

    def dataset(name, split, n=None, seed=0):
        key = (name, split, n, seed)
        if key not in loaded:
            loaded[key] = fdata.load(name, split, n=n, seed=seed)
        return loaded[key]

    rows = []
    for config in tqdm(configs, desc=desc, disable=not progress):
        result = trained(config)
        row = {"seed": config.seed, "status": result.status, "epochs": len(result.history),
               "stopped_by": result.stopped_by, "train_time_s": result.wall_time_s}
        train_set = dataset(config.dataset, "train", config.n, config.data_seed)
        test_set = dataset(config.dataset, "test")
        for split, ds in (("train", train_set), ("test", test_set)):
            evaluated: dict = {}  # one pass over the split gives both loss and accuracy

            def metric_of(metric, ds=ds, evaluated=evaluated):
                if not evaluated:
                    evaluated.update(ftrain.evaluate(result.model, *ds))
                return evaluated[metric]

            for metric in ("loss", "acc"):
                row[f"{split}_{metric}"] = measure(config, f"{split}_{metric}", lambda metric=metric: metric_of(metric),
                                                   version=version)
        row["gap"] = row["train_acc"] - row["test_acc"]
        for name in names:
            opts = options.get(name, {})
            # the initial weights are fixed by the config, so they are not part of the key
            extra = {"init": result.initial_state} if fmeasures.MEASURES[name].needs_init else {}
            row[name] = (float("nan") if result.status != "ok" else
                         measure(config, name, lambda name=name, opts=opts, extra=extra: fmeasures.MEASURES[name](
                             result.model, train_set, **opts, **extra), version=version, **opts))
        rows.append(row)
    return pd.DataFrame(rows)
