"""Trained networks and their measures, computed once and kept in ``flatlib.store``.

A network is stored under ``TrainConfig.key()`` (the config and the source of the training
code with everything it imports); a measure under a hash of (network key, measure name,
options, the source of ``flatlib.measures`` with everything it imports; for the losses and
accuracies this module computes itself, the source of this module with everything it
imports). A change to any code that could change a number therefore gives it a new key, and
an interrupted sweep, re-run, trains and measures only what is missing.

Both tables, ``network_table`` (networks given by config, every number memoised) and
``measure_table`` (networks given as models, e.g. reparameterised variants of one network),
build their rows with the same function, so their shared columns mean the same thing.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable, Iterable

from flatlib import data as fdata
from flatlib import measures as fmeasures
from flatlib import models, store
from flatlib import train as ftrain
from flatlib._io import progress as progress_bar
from flatlib._version import code_version


def _network_key(config: ftrain.TrainConfig) -> str:
    return f"networks/{config.key()}.pt"


def save_network(result: ftrain.TrainResult) -> Path:
    return store.put_torch(_network_key(result.config), {
        "config": result.config.to_dict(),
        "state": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "initial_state": result.initial_state,
        "history": result.history,
        "status": result.status,
        "wall_time_s": result.wall_time_s,
    })


def load_network(config: ftrain.TrainConfig) -> ftrain.TrainResult | None:
    """The stored network of ``config``, or None if it was never trained (or was corrupt)."""
    blob = store.get_torch(_network_key(config))
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


def sweep(configs: Iterable[ftrain.TrainConfig], desc: str = "networks") -> list[ftrain.TrainResult]:
    """Train (or fetch) every config in order, with a progress bar; resumable."""
    configs = list(configs)
    return [trained(c) for c in progress_bar(configs, desc)]


def measure_key(config: ftrain.TrainConfig, name: str, options: dict) -> str:
    """The store key of the number ``name`` with ``options`` on the network of ``config``."""
    # A registered measure is computed by flatlib.measures (and what it imports); any other
    # number (the losses and accuracies of ``_row``) by this module, so its source keys them.
    computed_by = fmeasures.__name__ if name in fmeasures.MEASURES else __name__
    payload = {"network": config.key(), "measure": name, "options": options, "code": code_version(computed_by)}
    return f"measures/{name}-{store.digest(payload)}.json"


def measure(config: ftrain.TrainConfig, name: str, compute: Callable[[], float], **options) -> float:
    """The number ``name`` with ``options`` on the network of ``config``: from the store, or
    ``compute()`` and stored."""
    key = measure_key(config, name, options)
    entry = store.get_json(key)
    if isinstance(entry, dict) and "value" in entry:
        return entry["value"]
    value = float(compute())
    store.put_json(key, {"measure": name, "options": options, "value": value})
    return value


def _checked(names: list[str] | None, options: dict | None) -> tuple[list[str], dict]:
    names = list(fmeasures.MEASURES) if names is None else list(names)
    unknown = sorted(set(names) - set(fmeasures.MEASURES))
    if unknown:
        raise ValueError(f"unknown measure(s) {unknown}; registered: {sorted(fmeasures.MEASURES)}")
    options = options or {}
    unused = sorted(set(options) - set(names))
    if unused:
        raise ValueError(f"options given for measure(s) {unused} that are not being computed")
    return names, options


def _computed(name: str, compute: Callable[[], float], options: dict) -> float:
    return float(compute())


def _row(model, train_set, test_set, names: list[str], options: dict, init: dict | None = None,
         value: Callable = _computed, reference_logits=None) -> dict:
    """The columns every table shares, for one network: train and test loss (mean
    cross-entropy, nats) and accuracy, ``gap`` = train - test accuracy, and every measure in
    ``names`` on ``train_set`` with ``options[name]``. With ``reference_logits`` (another
    network's test logits), also the number of test predictions that differ from it and the
    largest absolute logit difference. ``value(name, compute, options)`` returns each number:
    computed, or memoised by the caller. One forward pass per split, and only if a number
    needs it."""
    row = {}
    for split, (x, y) in (("train", train_set), ("test", test_set)):
        logits = functools.cache(lambda x=x: models.predict(model, x))
        metrics = functools.cache(lambda y=y, logits=logits: ftrain.logit_metrics(logits(), y))
        for metric in ("loss", "acc"):
            row[f"{split}_{metric}"] = value(f"{split}_{metric}", lambda m=metric, f=metrics: f()[m], {})
        if split == "test" and reference_logits is not None:
            reference_logits = reference_logits.to(logits().device)
            row["predictions_changed"] = int((logits().argmax(1) != reference_logits.argmax(1)).sum())
            row["max_logit_change"] = (logits() - reference_logits).abs().max().item()
    row["gap"] = row["train_acc"] - row["test_acc"]
    for name in names:
        measure_ = fmeasures.MEASURES[name]
        opts = options.get(name, {})
        extra = {"init": init} if measure_.needs_init else {}
        row[name] = value(name, lambda m=measure_, o=opts, e=extra: m(model, train_set, **o, **e), opts)
    return row


def network_table(configs: Iterable[ftrain.TrainConfig], names: list[str] | None = None,
                  options: dict | None = None, progress: bool = True, desc: str = "networks"):
    """One row per config: its training outcome (seed, status, epochs, the rule that stopped
    it, wall time), then ``_row``'s columns: train and test loss and accuracy on the network's
    own training subset and the full test split, the train-test accuracy ``gap``, and every
    measure in ``names`` (default: the whole registry) on the training subset, with
    ``options[name]`` passed to measure ``name``; a diverged network's measures are NaN.

    Networks and every number are memoised in the store, one entry per network and number,
    so an interrupted sweep resumes where it stopped and a repeated call trains and measures
    nothing."""
    import pandas as pd
    configs = list(configs)
    names, options = _checked(names, options)
    loaded: dict = {}

    def dataset(name, split, n=None, seed=0):
        key = (name, split, n, seed)
        if key not in loaded:
            loaded[key] = fdata.load(name, split, n=n, seed=seed)
        return loaded[key]

    rows = []
    for config in progress_bar(configs, desc, progress):
        result = trained(config)
        row = {"seed": config.seed, "status": result.status, "epochs": len(result.history),
               "stopped_by": result.stopped_by, "train_time_s": result.wall_time_s}
        ok = result.status == "ok"
        row.update(_row(result.model, dataset(config.dataset, "train", config.n, config.data_seed),
                        dataset(config.dataset, "test"), names if ok else [], options,
                        init=result.initial_state,  # fixed by the config, so not part of the key
                        value=lambda name, compute, opts, config=config: measure(config, name, compute, **opts)))
        if not ok:
            row.update(dict.fromkeys(names, math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def measure_table(networks: dict, train_data, test_data, names: list[str] | None = None,
                  options: dict | None = None, reference: str | None = None, progress: bool = True,
                  init: dict | None = None):
    """One row per network (``networks``: label -> model), indexed by label, with ``_row``'s
    columns: train and test loss and accuracy on ``train_data`` and ``test_data``, the ``gap``,
    and every measure in ``names`` (default: all) on ``train_data`` with ``options[name]``;
    with ``reference`` (a label), the number of test predictions that differ from that
    network's and the largest logit difference. ``init`` (the initial state dict the networks
    were trained from) is passed to the measures that need it. Nothing is memoised: the
    networks have no config to key them by."""
    import pandas as pd
    names, options = _checked(names, options)
    needing = [n for n in names if fmeasures.MEASURES[n].needs_init]
    if needing and init is None:
        raise ValueError(f"measure(s) {needing} need init=<the networks' initial state dict>")
    test_inputs, _ = test_data
    reference_logits = None if reference is None else models.predict(networks[reference], test_inputs)
    rows = [{"network": label, **_row(model, train_data, test_data, names, options, init=init,
                                      reference_logits=reference_logits)}
            for label, model in progress_bar(networks.items(), "networks", progress)]
    return pd.DataFrame(rows).set_index("network")


class StudyError(ValueError):
    """A study whose networks cannot support its analysis."""


def usable(table, minimum: int = 4):
    """The rows of a ``network_table`` whose networks trained without diverging. Fewer than
    ``minimum`` of them is one clear error with the count, not a crash further down: an
    analysis of rank correlations needs at least four networks."""
    ok = table[table["status"] == "ok"]
    if len(ok) < minimum:
        raise StudyError(f"{len(table) - len(ok)} of {len(table)} networks diverged, leaving {len(ok)}; the analysis "
                         f"needs at least {minimum}. Lower lr, or inspect the per-network CSV.")
    return ok
