"""Trained networks and their measures, computed once and kept in ``flatlib.store``.

A network is stored under ``TrainConfig.key()`` (its normalised config, the versions of the
data, the architectures and the training recipe, and the environment class); a measure under a
hash of (network key, measure name, options, the measure's version, the environment class); the
losses and accuracies this module computes itself under this module's ``VERSION`` (see
``flatlib.keys``). A behaviour change bumps a version and so gives new keys to exactly what it
changes; an interrupted sweep, re-run, trains and measures only what is missing. Each entry
carries the source-closure hash of the code that computed it, as provenance.

Both tables, ``network_table`` (networks given by config, every number memoised) and
``measure_table`` (networks given as models, e.g. reparameterised variants of one network),
build their rows with the same function, so their shared columns mean the same thing.

``network_table`` and ``sweep`` take an ``executor`` (``flatlib.executors``): by default each
network is computed here, one after another; otherwise each network (its training and every
number of its row) is one task on local worker processes or a Dask cluster, which writes into
the store, and this process reads the table from the store when the tasks are done. The row is
built by the same function either way, so the table does not depend on the executor.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import time
from typing import Callable, Iterable

from flatlib.engine import data as fdata
from flatlib.engine import ensemble, models
from flatlib.engine import measures as fmeasures
from flatlib.engine import train as ftrain
from flatlib.engine.networks import load_network, network_key, save_network, trained  # noqa: F401 (public here too)
from flatlib.infrastructure import executors, keys, store
from flatlib.infrastructure.output import progress as progress_bar
from flatlib.infrastructure.provenance import code_version
from flatlib.infrastructure.threads import one_thread

# The version of the numbers this module computes itself (``flatlib.keys``): the train and test
# loss (mean cross-entropy, nats) and accuracy of a row. Measures carry their own versions.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.study"), kept wherever the module lives.
VERSION_NAME = "flatlib.study"


def sweep(configs: Iterable[ftrain.TrainConfig], desc: str = "networks", progress: bool = True,
          executor=None) -> list[ftrain.TrainResult]:
    """Train (or fetch) every config, with a progress bar; the results in the order of
    ``configs``. Resumable: only networks missing from the store are trained, here
    (``executor`` None or "serial") or as tasks on ``executor`` (``flatlib.executors``)."""
    configs = list(configs)
    executor = executors.chosen(executor)
    executors.validate(executor)
    if all(store.verified(network_key(c)) for c in configs):  # a read-only store serves a complete sweep
        return [load_network(c) for c in configs]
    store.check_writable()
    _train_ensembles(configs, progress)
    if executors.is_serial(executor):
        results = [trained(c) for c in progress_bar(configs, desc, progress)]
        store.report_discarded()
        return results
    results = {config: load_network(config) for config in dict.fromkeys(configs)}
    missing = [config for config, result in results.items() if result is None]
    if missing:
        _compute_on(executor, missing, None, None, desc, progress)
        for config in missing:
            results[config] = load_network(config)
            if results[config] is None:
                raise not_shared(executor, NotInStore(f"network seed={config.seed} (key {config.key()})"))
    store.report_discarded()
    return [results[config] for config in configs]


def measure_key(config: ftrain.TrainConfig, name: str, options: dict) -> str:
    """The store key of the number ``name`` with ``options`` on the network of ``config``."""
    # A registered measure (or variant, or diagnostic) is versioned in the registry; any other
    # number (the losses and accuracies of ``table_row``) by this module's VERSION.
    registered = name in fmeasures.MEASURES or name in fmeasures.EXTRAS
    if registered:
        options = _effective(name, options)
        version = keys.note(f"measure:{name}", fmeasures.lookup(name).version)
    else:
        version = VERSION
    inputs = {"network": config.key(), "measure": name, "options": options}
    return f"measures/{name}-{keys.digest('measure', inputs, {name: version}, keys.environment(config.device))}.json"


def _effective(name: str, options: dict) -> dict:
    """``options`` without those equal to the measure's own defaults, so that a number asked for
    with its default options spelled out and one asked for without them share one entry."""
    measure = fmeasures.lookup(name)
    clash = sorted(set(options) & set(measure.fixed))
    if clash:  # refused before a key is made, so a variant's entry is never served for other options
        raise ValueError(f"{name} is a named variant that fixes {clash}; use the base measure to vary them")
    defaults = {k: p.default for k, p in inspect.signature(measure.fn).parameters.items()
                if p.default is not inspect.Parameter.empty}
    options = _typed(name, options)
    return {k: v for k, v in options.items() if not (k in defaults and type(v) is type(defaults[k])
                                                     and v == defaults[k])}


def _as_default_type(value, default):
    """An int option given where the default is a float means that float (``tol=1`` is 1.0)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def stored_measure(config: ftrain.TrainConfig, name: str, **options) -> float | None:
    """The number ``name`` with ``options`` on the network of ``config`` if the store has it,
    else None."""
    entry = store.get_json(measure_key(config, name, options))
    return entry["value"] if isinstance(entry, dict) and "value" in entry else None


def measure(config: ftrain.TrainConfig, name: str, compute: Callable[[], float], **options) -> float:
    """The number ``name`` with ``options`` on the network of ``config``: from the store, or
    ``compute()`` and stored, with the seconds it took (``benchmarks/phases_bench.py`` reads
    them; they are not part of the key)."""
    value = stored_measure(config, name, **options)
    if value is not None:
        return value
    start = time.perf_counter()
    value = float(compute())
    seconds = time.perf_counter() - start
    computed_by = fmeasures.__name__ if name in fmeasures.MEASURES or name in fmeasures.EXTRAS else __name__
    store.put_json(measure_key(config, name, options), {"measure": name, "options": keys.normalise(options),
                                                        "value": value, "code": code_version(computed_by),
                                                        "seconds": seconds})
    return value


def _checked(names: list[str] | None, options: dict | None) -> tuple[list[str], dict]:
    names = list(fmeasures.MEASURES) if names is None else list(names)
    unknown = sorted(set(names) - set(fmeasures.MEASURES) - set(fmeasures.EXTRAS))
    if unknown:
        raise ValueError(f"unknown measure(s) {unknown}; registered: {sorted(fmeasures.MEASURES)}; variants and "
                         f"diagnostics: {sorted(fmeasures.EXTRAS)}")
    options = options or {}
    unused = sorted(set(options) - set(names))
    if unused:
        raise ValueError(f"options given for measure(s) {unused} that are not being computed")
    return names, {name: _typed(name, opts) for name, opts in options.items()}


def _typed(name: str, options: dict) -> dict:
    """``options`` of measure ``name`` with an int given for a float default made that float, so
    that the number computed and its key both mean ``max_radius=20.0`` whether 20 or 20.0 was
    written (``torch.full(..., 20)`` would otherwise make an integer tensor)."""
    defaults = {k: p.default for k, p in inspect.signature(fmeasures.lookup(name).fn).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {k: _as_default_type(v, defaults.get(k)) for k, v in keys.normalise(options).items()}


def _computed(name: str, compute: Callable[[], float], options: dict) -> float:
    return float(compute())


def table_row(model, train_set, test_set, names: list[str], options: dict, init: dict | None = None,
         value: Callable = _computed, reference_logits=None) -> dict:
    """The columns every table shares, for one network: train and test loss (mean
    cross-entropy, nats) and accuracy, ``gap`` = train - test accuracy, and every measure in
    ``names`` on ``train_set`` with ``options[name]``. With ``reference_logits`` (another
    network's test logits), also the number of test predictions that differ from it and the
    largest absolute logit difference. ``value(name, compute, options)`` returns each number:
    computed, or memoised by the caller. One forward pass per split, and only if a number
    needs it.

    Every number is computed on one thread (``flatlib.threads.one_thread``), as training is."""
    with one_thread():
        return _row_on_this_thread(model, train_set, test_set, names, options, init, value, reference_logits)


def _row_on_this_thread(model, train_set, test_set, names, options, init, value, reference_logits) -> dict:
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
        measure_ = fmeasures.lookup(name)
        opts = options.get(name, {})
        extra = {"init": init} if measure_.needs_init else {}
        row[name] = value(name, lambda m=measure_, o=opts, e=extra: m(model, train_set, **o, **e), opts)
    return row


class NotInStore(LookupError):
    """A network or number that a read-only row (``_network_row(stored_only=True)``) needs and
    the store lacks."""


# The data of the rows, shared by the networks one process computes (a worker's many tasks):
# ``flatlib.data.load``, memoised.
dataset = functools.lru_cache(maxsize=4)(fdata.load)


def _network_row(config: ftrain.TrainConfig, names: list[str], options: dict, stored_only: bool = False) -> dict:
    """The row of ``network_table`` for ``config``: the network and every number from the
    store, training and computing (and storing) what it lacks; with ``stored_only``, nothing
    is computed and the first missing entry raises ``NotInStore``."""
    if stored_only:
        result = load_network(config)
        if result is None:
            raise NotInStore(f"network seed={config.seed} (key {config.key()})")

        def value(name, compute, opts):
            number = stored_measure(config, name, **opts)
            if number is None:
                raise NotInStore(f"{name} of network seed={config.seed} (key {config.key()})")
            return number
    else:
        result = trained(config)

        def value(name, compute, opts):
            return measure(config, name, compute, **opts)

    row = {"seed": config.seed, "status": result.status, "epochs": len(result.history),
           "stopped_by": result.stopped_by, "train_time_s": result.wall_time_s}
    ok = result.status == "ok"
    row.update(table_row(result.model, dataset(config.dataset, "train", config.n, config.data_seed),
                    dataset(config.dataset, "test"), names if ok else [], options,
                    init=result.initial_state,  # fixed by the config, so not part of the key
                    value=value))
    if not ok:
        row.update(dict.fromkeys(names, math.nan))
    return row


def network_table(configs: Iterable[ftrain.TrainConfig], names: list[str] | None = None,
                  options: dict | None = None, progress: bool = True, desc: str = "networks", executor=None):
    """One row per config: its training outcome (seed, status, epochs, the rule that stopped
    it, wall time), then ``table_row``'s columns: train and test loss and accuracy on the network's
    own training subset and the full test split, the train-test accuracy ``gap``, and every
    measure in ``names`` (default: the whole registry) on the training subset, with
    ``options[name]`` passed to measure ``name``; a diverged network's measures are NaN.

    Networks and every number are memoised in the store, one entry per network and number,
    so an interrupted sweep resumes where it stopped and a repeated call trains and measures
    nothing. ``executor`` (``flatlib.executors``) says where the missing networks are
    computed: here, one after another (None or "serial"), or one task per network on local
    worker processes ("processes") or a Dask cluster (its scheduler's address or a
    ``distributed.Client``); the table is then read from the store, so it is the same
    whatever the executor. A store this process cannot write to is refused before any work,
    unless it already holds every number asked for (a read-only copy of a finished sweep)."""
    import pandas as pd
    configs = list(configs)
    names, options = _checked(names, options)
    executor = executors.chosen(executor)
    executors.validate(executor)
    rows = {}
    for config in dict.fromkeys(configs):
        with contextlib.suppress(NotInStore):
            rows[config] = _network_row(config, names, options, stored_only=True)
    missing = [config for config in dict.fromkeys(configs) if config not in rows]
    if not missing:  # every number is in the store: a read-only store serves it
        store.report_discarded()
        return pd.DataFrame([rows[config] for config in configs])
    store.check_writable()
    _train_ensembles(configs, progress)
    if executors.is_serial(executor):
        table = pd.DataFrame([rows[config] if config in rows else _network_row(config, names, options)
                              for config in progress_bar(configs, desc, progress)])
        store.report_discarded()
        return table
    if missing:
        _compute_on(executor, missing, names, options, desc, progress)
        for config in missing:
            try:
                rows[config] = _network_row(config, names, options, stored_only=True)
            except NotInStore as error:
                raise not_shared(executor, error) from error
    store.report_discarded()
    return pd.DataFrame([rows[config] for config in configs])


# ---------------------------------------------------------------------------------- tasks

def _network_task(config: ftrain.TrainConfig, names: list[str] | None, options: dict | None, store_root: str) -> dict:
    """One network of a sweep, as an executor's worker runs it: on one thread, into the store
    at ``store_root`` (the submitting process's), train the network and, unless ``names`` is
    None, compute every number of its ``network_table`` row. Returns the receipt
    (``executors.receipt``) that the caller checks."""
    with executors.task_environment(store_root):
        if names is None:
            trained(config)
        else:
            _network_row(config, names, options)
        return executors.receipt()


def _train_ensembles(configs, progress) -> None:
    """Train (or find in the store) the configs that ``ensemble.dispatched_groups`` picks (on CUDA,
    differing only in their seed) as ensembles (``flatlib.ensemble``), which store each network
    under its config's key; the sweep then finds them there as if the loop had trained them."""
    chosen = [config for group in ensemble.dispatched_groups(configs) for config in group]
    if chosen:
        ensemble.store_ensembles(chosen, progress)


def _compute_on(executor, configs, names, options, desc, progress) -> None:
    """Run ``_network_task`` for every config on ``executor``; refuse receipts from workers
    that key the store differently from this process (``executors.check_receipt``)."""
    store_root = store.location()
    argsets = [(config, names, options, store_root) for config in configs]
    task_keys = [f"flatlib-network-{store.digest([config.key(), names, options])}" for config in configs]
    executors.run_checked(_network_task, argsets, executor, desc, progress, keys=task_keys)


def not_shared(executor, error: NotInStore) -> executors.ExecutorError:
    return executors.ExecutorError(
        f"{error.args[0]} is not in the store {store.location()} although its task on "
        f"{executors.describe(executor)} finished: the workers wrote to a store this process cannot see. "
        "Put $FLATLIB_CACHE on a filesystem every worker mounts at the same path, or in a bucket "
        "(s3://bucket/prefix) every worker reaches with the same endpoint and credentials.")


def measure_table(networks: dict, train_data, test_data, names: list[str] | None = None,
                  options: dict | None = None, reference: str | None = None, progress: bool = True,
                  init: dict | None = None):
    """One row per network (``networks``: label -> model), indexed by label, with ``table_row``'s
    columns: train and test loss and accuracy on ``train_data`` and ``test_data``, the ``gap``,
    and every measure in ``names`` (default: all) on ``train_data`` with ``options[name]``;
    with ``reference`` (a label), the number of test predictions that differ from that
    network's and the largest logit difference. ``init`` (the initial state dict the networks
    were trained from) is passed to the measures that need it. Nothing is memoised: the
    networks have no config to key them by."""
    import pandas as pd
    names, options = _checked(names, options)
    needing = [n for n in names if fmeasures.lookup(n).needs_init]
    if needing and init is None:
        raise ValueError(f"measure(s) {needing} need init=<the networks' initial state dict>")
    test_inputs, _ = test_data
    reference_logits = None if reference is None else models.predict(networks[reference], test_inputs)
    rows = [{"network": label, **table_row(model, train_data, test_data, names, options, init=init,
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


def at_target(table, minimum: int = 4):
    """``(kept, left_out)``: the rows of a ``network_table`` whose networks stopped at the common
    training-loss target (``stopped_by == "target_train_loss"``, so every one was compared at the
    same fit of its training set), and the count of the others by the rule that stopped them
    ("patience", "epoch cap", "diverged", ...). Networks compared in one correlation stop at the
    same training loss; one that did not is counted here and left out, never silently kept. Fewer
    than ``minimum`` kept is one clear error."""
    kept = table[(table["status"] == "ok") & (table["stopped_by"] == "target_train_loss")]
    left_out = table.loc[~table.index.isin(kept.index), "stopped_by"].value_counts().to_dict()
    if len(kept) < minimum:
        raise StudyError(f"{len(kept)} of {len(table)} networks reached the training-loss target ({left_out} did "
                         f"not); the analysis needs at least {minimum}. Raise the epoch cap or the patience, or "
                         "lower the learning rate.")
    return kept, {str(k): int(v) for k, v in left_out.items()}


def in_store(configs: Iterable[ftrain.TrainConfig]) -> int:
    """How many of ``configs`` already have a trained network in the store: 0 before a
    cold-start run, so a chapter can say whether its wall time includes the training."""
    return sum(store.verified(network_key(c)) for c in configs)


def correct_predictions(configs: Iterable[ftrain.TrainConfig], progress: bool = False):
    """A networks x test images array, True where the stored network of each config labels that
    image of the full test split correctly: the raw material of the test set's reliability
    (``flatlib.stats.ranking_reliability``). Reads networks from the store only; a config never
    trained is one ``NotInStore`` error."""
    import numpy as np
    rows = []
    for config in progress_bar(list(configs), "test predictions", progress):
        result = load_network(config)
        if result is None:
            raise NotInStore(f"network seed={config.seed} (key {config.key()})")
        x, y = dataset(config.dataset, "test")
        with one_thread():
            rows.append((models.predict(result.model, x).argmax(1).cpu() == y).numpy())
    return np.stack(rows)


def seed_study(dataset: str, networks: int, n: int, widths, optimizer: str, lr: float, batch_size: int,
               max_epochs: int, first_seed: int = 0, target_train_loss: float = 0.01,
               patience: int | None = 10, lr_decay: float | None = None,
               lr_decays: int = 2) -> list[ftrain.TrainConfig]:
    """The configs of the head-to-head design (Bennett 2026): ``networks`` networks that differ
    only in their seed (initialisation and data order), on one class-stratified subset of ``n``
    training images. Every network stops at the end of the first epoch whose full-pass training
    cross-entropy is at most ``target_train_loss`` nats, or once it has not improved for
    ``patience`` epochs, capped at ``max_epochs``: one loss target for all, so that the networks
    are compared at the same fit of their training set (stopping at 100 % training accuracy
    left the loss at the stop free to vary, and it tracked the sharpness and weakness measures).
    With ``lr_decay``, a plateau first lowers the learning rate (``TrainConfig.lr_decay``), so that
    networks that would stall above the target reach it. The head-to-head and PAC-Bayes chapters
    share these networks."""
    return [ftrain.TrainConfig(dataset=dataset, n=n, widths=tuple(widths), optimizer=optimizer, lr=lr,
                               batch_size=batch_size, epochs=max_epochs, target_train_acc=None,
                               target_train_loss=target_train_loss, patience=patience, seed=seed,
                               lr_decay=lr_decay, lr_decays=lr_decays)
            for seed in range(first_seed, first_seed + networks)]
