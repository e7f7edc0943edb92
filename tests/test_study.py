import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flatlib import data, models, networks, reparam, store, study
from flatlib import measures as fmeasures
from flatlib import train as ftrain
from flatlib._version import code_version, import_closure
from flatlib.train import TrainConfig

TINY = dict(dataset="mnist", n=128, widths=(16,), batch_size=32, epochs=1, target_train_acc=None)
PACKAGE = Path(fmeasures.__file__).resolve().parents[1]  # flatlib/, the measures in flatlib/engine/


@pytest.fixture
def counted_training(monkeypatch):
    calls = []
    real = ftrain.train

    def counting(config, progress=False):
        calls.append(config.seed)
        return real(config)

    monkeypatch.setattr(ftrain, "train", counting)
    return calls


def test_second_request_is_served_from_the_store_with_identical_weights(counted_training):
    first = study.trained(TrainConfig(**TINY))
    second = study.trained(TrainConfig(**TINY))
    assert counted_training == [0]
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k])
    for k, v in first.initial_state.items():
        assert torch.equal(v, second.initial_state[k])
    assert second.history == first.history


def _killed_at_seed(monkeypatch, seed, run):
    """Run ``run()`` with the process 'killed' (KeyboardInterrupt) while saving network ``seed``."""
    real_save = networks.save_network

    def killed(result):
        if result.config.seed == seed:
            raise KeyboardInterrupt
        return real_save(result)

    monkeypatch.setattr(networks, "save_network", killed)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(networks, "save_network", real_save)


def test_interrupted_sweep_resumes_and_trains_only_what_is_missing(counted_training, monkeypatch):
    configs = [TrainConfig(**{**TINY, "seed": s}) for s in range(5)]
    _killed_at_seed(monkeypatch, 3, lambda: study.sweep(configs))
    counted_training.clear()
    results = study.sweep(configs)
    assert counted_training == [3, 4]
    assert [r.config.seed for r in results] == list(range(5))
    assert not list(store.cache_dir().rglob("*.tmp"))


def test_corrupt_network_entry_is_retrained(counted_training):
    config = TrainConfig(**TINY)
    path = study.save_network(study.trained(config))
    path.write_bytes(path.read_bytes()[:100])
    study.trained(config)
    assert counted_training == [0, 0]


def test_measures_are_memoised_per_network_name_and_options():
    config = TrainConfig(**TINY)
    calls = []

    def compute():
        calls.append(1)
        return 1.5

    assert study.measure(config, "m", compute, tau=0.1) == 1.5
    assert study.measure(config, "m", compute, tau=0.1) == 1.5
    assert len(calls) == 1
    study.measure(config, "m", compute, tau=0.2)
    study.measure(config, "m2", compute, tau=0.1)
    study.measure(TrainConfig(**{**TINY, "seed": 9}), "m", compute, tau=0.1)
    assert len(calls) == 4


def test_a_stored_measure_records_the_seconds_it_took_outside_its_key():
    import time
    config = TrainConfig(**TINY)

    def slow():
        time.sleep(0.05)
        return 2.0

    study.measure(config, "m", slow, tau=0.1)
    entry = study.store.get_json(study.measure_key(config, "m", {"tau": 0.1}))
    assert entry["value"] == 2.0 and 0.05 <= entry["seconds"] < 5


def test_network_table_killed_halfway_resumes_without_retraining_or_remeasuring(counted_training, monkeypatch):
    configs = [TrainConfig(**{**TINY, "seed": s}) for s in range(4)]
    measured = []
    real = fmeasures.MEASURES["simplicity_l2"]
    monkeypatch.setitem(fmeasures.MEASURES, "simplicity_l2", fmeasures.Measure(
        "simplicity_l2", real.family, real.invariant, lambda model, data: measured.append(1) or real(model, data)))
    _killed_at_seed(monkeypatch, 2, lambda: study.network_table(configs, names=["simplicity_l2"], progress=False))
    assert counted_training == [0, 1, 2] and len(measured) == 2
    counted_training.clear()
    measured.clear()
    table = study.network_table(configs, names=["simplicity_l2"], progress=False)
    assert counted_training == [2, 3] and len(measured) == 2
    assert list(table["seed"]) == [0, 1, 2, 3]
    assert list(table.columns) == ["seed", "status", "epochs", "stopped_by", "train_time_s", "train_loss",
                                   "train_acc", "test_loss", "test_acc", "gap", "simplicity_l2"]
    assert (table["gap"] == table["train_acc"] - table["test_acc"]).all()
    again = study.network_table(configs, names=["simplicity_l2"], progress=False)
    assert counted_training == [2, 3] and len(measured) == 2
    assert again.drop(columns="train_time_s").equals(table.drop(columns="train_time_s"))


def test_tables_refuse_unknown_measures_and_stray_options():
    model = models.build("mlp", (4,))
    for table, first in ((study.network_table, [TrainConfig(**TINY)]), (study.measure_table, {"a": model})):
        rest = () if table is study.network_table else (None, None)
        with pytest.raises(ValueError, match="unknown measure"):
            table(first, *rest, names=["flatness_of_vibes"])
        with pytest.raises(ValueError, match="not being computed"):
            table(first, *rest, names=["simplicity_l2"], options={"top_eigenvalue": {}})
    with pytest.raises(ValueError, match="need init"):
        study.measure_table({"a": model}, None, None, names=["pacbayes_bound"])


def test_network_table_evaluates_each_split_once_per_network(monkeypatch):
    configs = [TrainConfig(**{**TINY, "seed": s}) for s in range(2)]
    networks = [study.trained(c) for c in configs]  # train first: training evaluates too
    calls = []
    real = models.predict
    monkeypatch.setattr(models, "predict", lambda model, x: calls.append(len(x)) or real(model, x))
    table = study.network_table(configs, names=[], progress=False)
    assert sorted(calls) == [128, 128, 10000, 10000]  # train and test split of each network, once each
    study.network_table(configs, names=[], progress=False)
    assert len(calls) == 4
    monkeypatch.setattr(models, "predict", real)
    test = ftrain.evaluate(networks[1].model, *data.load("mnist", "test"))
    assert (table.loc[1, "test_loss"], table.loc[1, "test_acc"]) == (test["loss"], test["acc"])


def test_both_tables_build_the_same_row_for_the_same_network():
    config = TrainConfig(**TINY)
    result = study.trained(config)
    names = ["simplicity_l2", "weakness_open_labels", "pacbayes_bound"]
    options = {"pacbayes_bound": {"samples": 3}}
    by_config = study.network_table([config], names=names, options=options, progress=False).iloc[0]
    train_set = data.load("mnist", "train", n=config.n, seed=config.data_seed)
    scaled = reparam.alpha_scale(result.model, 0, 10.0)
    by_model = study.measure_table({"trained": result.model, "scaled": scaled}, train_set, data.load("mnist", "test"),
                                   names=names, options=options, reference="trained", progress=False,
                                   init=result.initial_state)
    shared = ["train_loss", "train_acc", "test_loss", "test_acc", "gap", *names]
    assert list(by_model.columns) == ["train_loss", "train_acc", "test_loss", "test_acc",
                                      "predictions_changed", "max_logit_change", "gap", *names]
    assert by_model.loc["trained", shared].tolist() == by_config[shared].tolist()
    assert by_model.loc["trained", "predictions_changed"] == 0 == by_model.loc["scaled", "predictions_changed"]
    assert by_model.loc["trained", "max_logit_change"] == 0 < by_model.loc["scaled", "max_logit_change"] < 1e-3


# ------------------------------------------------------------- keys follow versions, not bytes

def test_the_provenance_hash_covers_every_module_measures_and_training_import():
    assert set(import_closure("flatlib.engine.measures")) >= {
        "flatlib", "flatlib.engine", "flatlib.engine.data", "flatlib.engine.hessian", "flatlib.engine.measures",
        "flatlib.engine.models", "flatlib.engine.pacbayes", "flatlib.engine.reparam"}
    assert set(import_closure("flatlib.engine.train")) >= {"flatlib", "flatlib.engine.data", "flatlib.engine.models",
                                                          "flatlib.engine.train"}


def test_import_closure_follows_every_form_of_import(tmp_path):
    files = {
        "__init__.py": "",
        "top.py": "import flatlib.a\nfrom flatlib import b\nfrom flatlib.c import thing\nfrom . import d\n"
                  "from .e import other\n\ndef later():\n    from flatlib import f\n",
        "a.py": "", "b.py": "from .g import x\n", "c.py": "thing = 1\n", "d.py": "", "e.py": "other = 2\n",
        "f.py": "import os\n", "g.py": "x = 3\n", "unused.py": "",
        "sub/__init__.py": "from .. import a\n", "sub/h.py": "from ..c import thing\n",
    }
    for name, text in files.items():
        (tmp_path / "flatlib" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "flatlib" / name).write_text(text)
    assert list(import_closure("flatlib.top", tmp_path)) == [
        "flatlib", "flatlib.a", "flatlib.b", "flatlib.c", "flatlib.d", "flatlib.e", "flatlib.f", "flatlib.g",
        "flatlib.top"]
    assert list(import_closure("flatlib.sub.h", tmp_path)) == [
        "flatlib", "flatlib.a", "flatlib.c", "flatlib.sub", "flatlib.sub.h"]
    before = code_version("flatlib.top", tmp_path)
    (tmp_path / "flatlib" / "unused.py").write_text("# edited\n")
    assert code_version("flatlib.top", tmp_path) == before
    (tmp_path / "flatlib" / "g.py").write_text("x = 4\n")
    assert code_version("flatlib.top", tmp_path) != before


KEYS = r"""
import json, sys
out = {}
for root in sys.argv[1:]:
    for name in [m for m in sys.modules if m == "flatlib" or m.startswith("flatlib.")]:
        del sys.modules[name]
    sys.path.insert(0, root)
    from flatlib import study
    from flatlib.train import TrainConfig
    assert study.__file__.startswith(root), study.__file__
    config = TrainConfig()
    out[root] = {"network": config.key(), "measure": study.measure_key(config, "hessian_trace", {}),
                 "metric": study.measure_key(config, "test_acc", {})}
    sys.path.remove(root)
print(json.dumps(out))
"""


def _edited(path, old, new):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_code_edit_rekeys_nothing_and_a_version_bump_rekeys_exactly_what_it_versions(tmp_path):
    """On copies of the package, each edited once, a fresh interpreter computes the store keys of
    a network, of one of its measures and of its test accuracy."""
    edits = {
        "unchanged": [],
        "train edited": [("engine/train.py", "", "\nAN_EDITED_CONSTANT = 1  # an edited comment\n")],
        "hessian edited": [("engine/hessian.py", "", "\nAN_EDITED_CONSTANT = 1\n")],
        "train bumped": [("engine/train.py", "\nVERSION = 2\n", "\nVERSION = 3\n")],
        "data bumped": [("engine/data.py", "\nVERSION = 1\n", "\nVERSION = 2\n")],
        "hessian_trace bumped": [("engine/sharpness.py", '@register("hessian_trace", "sharpness", invariant=False)',
                                  '@register("hessian_trace", "sharpness", invariant=False, version=2)')],
        "study bumped": [("experiments/study.py", "\nVERSION = 1\n", "\nVERSION = 2\n")],
    }
    roots = {}
    for label, changes in edits.items():
        root = tmp_path / label.replace(" ", "_")
        shutil.copytree(PACKAGE, root / "flatlib", ignore=shutil.ignore_patterns("__pycache__"))
        for module, old, new in changes:
            path = root / "flatlib" / module
            if old:
                _edited(path, old, new)
            else:
                path.write_text(path.read_text() + new)
        roots[label] = str(root)
    out = subprocess.run([sys.executable, "-c", KEYS, *roots.values()], capture_output=True, text=True, check=True)
    keys = {label: json.loads(out.stdout)[root] for label, root in roots.items()}
    base = keys["unchanged"]
    assert keys["train edited"] == base and keys["hessian edited"] == base  # no behaviour declared changed
    for label in ("train bumped", "data bumped"):  # every network, and with it every number of it
        assert all(keys[label][k] != base[k] for k in base), label
    assert keys["hessian_trace bumped"]["measure"] != base["measure"]
    assert {k: v for k, v in keys["hessian_trace bumped"].items() if k != "measure"} == \
        {k: v for k, v in base.items() if k != "measure"}
    assert keys["study bumped"]["metric"] != base["metric"]
    assert {k: v for k, v in keys["study bumped"].items() if k != "metric"} == \
        {k: v for k, v in base.items() if k != "metric"}


def test_the_running_package_keeps_the_version_it_was_imported_with(monkeypatch, tmp_path):
    """An edit on disk during a long run must not re-key what the already-imported code computes."""
    from flatlib import _version

    before = code_version("flatlib.engine.reparam")
    copy = tmp_path / "flatlib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    edited = copy / "engine" / "reparam.py"
    edited.write_text(edited.read_text() + "\n# edited\n")
    monkeypatch.setattr(_version, "_ROOT", tmp_path)
    assert code_version("flatlib.engine.reparam") == before
    assert code_version("flatlib.engine.reparam", tmp_path) != before


def test_usable_networks_are_the_ones_that_did_not_diverge_and_too_few_is_one_clear_error():
    import pandas as pd

    table = pd.DataFrame({"status": ["ok", "diverged", "ok", "ok", "ok"], "test_acc": [0.9, 0.1, 0.8, 0.85, 0.7]})
    assert list(study.usable(table).index) == [0, 2, 3, 4]
    with pytest.raises(study.StudyError, match="1 of 5 networks diverged, leaving 4; the analysis needs at least 5"):
        study.usable(table, minimum=5)


def test_in_store_counts_the_networks_already_trained():
    configs = [ftrain.TrainConfig(**{**TINY, "seed": s}) for s in range(3)]
    assert study.in_store(configs) == 0
    study.trained(configs[1])
    assert study.in_store(configs) == 1


def test_a_measure_asked_for_with_its_default_options_spelled_out_shares_the_entry():
    from flatlib import study
    from flatlib.train import TrainConfig
    config = TrainConfig(n=100, widths=(4,), epochs=1)
    plain = study.measure_key(config, "weakness_input_volume", {})
    assert study.measure_key(config, "weakness_input_volume", {"max_radius": 20.0}) == plain
    assert study.measure_key(config, "weakness_input_volume", {"max_radius": 40.0}) != plain
    # an int for a float option means that float, in the key and in the computation (_typed)
    assert study.measure_key(config, "weakness_input_volume", {"max_radius": 20}) == plain
    assert study._checked(["weakness_input_volume"], {"weakness_input_volume": {"max_radius": 20}})[1] == \
        {"weakness_input_volume": {"max_radius": 20.0}}
    assert type(study._checked(["weakness_input_volume"], {"weakness_input_volume": {"max_radius": 20}})[1][
        "weakness_input_volume"]["max_radius"]) is float
    with pytest.raises(ValueError, match="fixes \\['tau'\\]"):
        study.measure_key(config, "weakness_open_labels_tau0.01", {"tau": 0.1})
