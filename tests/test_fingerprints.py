"""Versions guarded by behaviour: the committed fingerprints match the code, a behaviour change
that forgot its version bump is caught (naming the computation and saying "bump its version"),
and a pure refactor re-keys nothing and leaves every published chapter as current as it was."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flatlib import fingerprints, keys, report
from flatlib import train as ftrain

ROOT = report.ROOT


def test_every_fingerprint_matches_the_committed_record():
    problems = fingerprints.check(fingerprints.recorded(), fingerprints.compute())
    assert not problems, "\n".join(problems)


def test_every_versioned_computation_has_a_canary():
    """Each version a chapter can record (every measure, diagnostic, certificate kind and module
    VERSION) is guarded by some canary."""
    import flatlib.atlas  # noqa: F401  (loaded, so that its VERSION is listed)
    import flatlib.batchsize  # noqa: F401
    from flatlib import certificates, measures

    fingerprints._register_all()
    guarded = {g for c in fingerprints.CANARIES.values() for g in c.guards}
    declared = {*keys.module_versions(), *(f"certificate:{k}" for k in certificates.VERSIONS),
                *(f"measure:{n}" for n in measures.MEASURES),
                *(f"measure:{n}" for n, m in measures.EXTRAS.items() if m.family == "diagnostic")}
    assert declared - guarded == set()


def test_a_bump_without_re_recording_is_named(monkeypatch):
    monkeypatch.setattr(ftrain, "VERSION", ftrain.VERSION + 1)
    problems = fingerprints.check(fingerprints.recorded(), fingerprints.compute(["training"]))
    assert len(problems) == 1 and "training: versions bumped (module:flatlib.train" in problems[0]
    assert "python -m flatlib fingerprints --record" in problems[0]


def test_a_canary_never_recorded_is_named():
    computed = fingerprints.compute(["models"])
    assert fingerprints.check({}, computed) == [
        "models: no recorded fingerprint; record it: python -m flatlib fingerprints --record"]


def test_rounding_passes_and_a_tenth_of_a_percent_does_not():
    old = {"x": {"versions": {"module:a": 1}, "values": {"loss": 0.5, "epochs": 3, "curve": [1.0, 2.0]}}}
    same = {"x": {"versions": {"module:a": 1}, "values": {"loss": 0.5 * (1 + 1e-6), "epochs": 3,
                                                          "curve": [1.0, 2.0 + 1e-7]}}}
    moved = {"x": {"versions": {"module:a": 1}, "values": {"loss": 0.5 * 1.001, "epochs": 3, "curve": [1.0, 2.0]}}}
    fewer = {"x": {"versions": {"module:a": 1}, "values": {"loss": 0.5, "epochs": 4, "curve": [1.0, 2.0]}}}
    assert fingerprints.check(old, same) == []
    for new in (moved, fewer):
        (problem,) = fingerprints.check(old, new)
        assert problem.startswith("x: its numbers moved while its version did not: bump its version [module:a")


# -------------------------------------------------- the same edits made to a copy of the package

CHECK = r"""
import json, sys
from flatlib import fingerprints
names = sys.argv[1].split(",")
print(json.dumps(fingerprints.check(fingerprints.recorded(), fingerprints.compute(names))))
"""

STATE = r"""
import json
from flatlib import atlas, runner, study
from flatlib.train import TrainConfig
configs = [TrainConfig(), *study.seed_study("mnist", 3, 2000, (512, 512), "sgd", 0.05, 64, 100),
           *atlas.configs("fashion_mnist", atlas.grid(["adam"], [1000], [64], [50])[0], 2, {"adam": 1e-3}, 200,
                          0.01, 10)]
print(json.dumps({"keys": [c.key() for c in configs],
                  "measures": [study.measure_key(c, "top_eigenvalue", {}) for c in configs],
                  "stale": runner.stale()}))
"""


def _copy(tmp_path: Path, name: str) -> Path:
    """A copy of what the package and its staleness read: flatlib/, chapters.yml, the published
    summaries and chapter sources."""
    root = tmp_path / name
    shutil.copytree(ROOT / "flatlib", root / "flatlib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "chapters.yml", root / "chapters.yml")
    for summary in (ROOT / "book").glob("*/summary.json"):
        (root / "book" / summary.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(summary, root / "book" / summary.parent.name / "summary.json")
    return root


def _edit(root: Path, module: str, old: str, new: str) -> None:
    path = root / "flatlib" / module
    text = path.read_text()
    assert text.count(old) == 1, (module, old)
    path.write_text(text.replace(old, new))


def _python(root: Path, script: str, *args) -> str:
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_pure_refactor_of_training_rekeys_nothing_and_leaves_every_chapter_as_current(tmp_path):
    """A helper moved to another module, locals renamed, a new option whose default keeps the old
    behaviour: the same keys, the same stale chapters (and reasons), the same fingerprints."""
    before = json.loads(_python(_copy(tmp_path, "before"), STATE))
    root = _copy(tmp_path, "refactored")
    train_py = (root / "flatlib" / "engine" / "train.py").read_text()
    shift = train_py[train_py.index("def _shift("):train_py.index("def init_model(")]
    (root / "flatlib" / "engine" / "augmentation.py").write_text(
        '"""Random shifts of images."""\nimport torch\nimport torch.nn.functional as F\n\n\n'
        + shift.replace("def _shift(", "def shift("))
    _edit(root, "engine/train.py", shift, "")
    _edit(root, "engine/train.py", "from flatlib.engine import models\n",
          "from flatlib.engine import models\nfrom flatlib.engine.augmentation import shift\n")
    _edit(root, "engine/train.py", "xb = _shift(xb.cpu(), gen)", "xb = shift(xb.cpu(), gen)")
    text = (root / "flatlib" / "engine" / "train.py").read_text().replace("running += ", "total_loss += ").replace(
        "running, seen = 0.0, 0", "total_loss, seen = 0.0, 0").replace("running / seen", "total_loss / seen")
    (root / "flatlib" / "engine" / "train.py").write_text(text)
    _edit(root, "engine/train.py", "    patience: int | None = None\n",
          "    patience: int | None = None\n"
          "    # a learning-rate warm-up, off by default: the old recipe, so no key changes\n"
          '    warmup_epochs: int = field(default=0, metadata={"neutral": 0})\n')
    after = json.loads(_python(root, STATE))
    assert after == before
    assert json.loads(_python(root, CHECK, "training")) == []


@pytest.mark.parametrize("module,old,new,canary", [
    ("engine/train.py", "lr=config.lr, momentum", "lr=config.lr * 1.001, momentum", "training"),  # a training constant
    ("engine/train.py", "since_best >= config.patience:\n            # Training stopped",
     "since_best > config.patience:\n            # Training stopped", "training"),  # a stopping rule
    ("engine/sharpness.py", "u = (u.detach() + 0.25 * torch.sign(g))", "u = (u.detach() + 0.26 * torch.sign(g))",
     "measure:adaptive_sharpness"),  # a measure's constant
])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_behaviour_change_that_forgot_its_bump_fails_naming_it(tmp_path, module, old, new, canary):
    root = _copy(tmp_path, "changed")
    _edit(root, module, old, new)
    problems = json.loads(_python(root, CHECK, canary))
    assert len(problems) == 1 and problems[0].startswith(f"{canary}: its numbers moved while its version did not: "
                                                         "bump its version"), problems
