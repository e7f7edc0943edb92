"""The library's layout: where each module lives, what it may import, and the names that tie
published results to the code (``flatlib.keys``)."""
import importlib
import json
import sys
from pathlib import Path

from flatlib import keys
from flatlib._version import public_modules

ROOT = Path(__file__).resolve().parent.parent

# The module version names that published summaries record ("module:flatlib.train"): moving a
# module must keep its name, or every chapter that used it turns stale.
RECORDED_MODULE_NAMES = {
    "flatlib.atlas", "flatlib.batchsize", "flatlib.data", "flatlib.ensemble", "flatlib.finite",
    "flatlib.hessian", "flatlib.interpolators", "flatlib.landscape", "flatlib.models", "flatlib.pacbayes",
    "flatlib.regularised", "flatlib.reparam", "flatlib.stats", "flatlib.study", "flatlib.train",
}


def _import_all():
    return [importlib.import_module(name) for name in public_modules()]


def test_versioned_modules_keep_their_recorded_names():
    _import_all()
    declared = {module.VERSION_NAME: module.VERSION for module in list(sys.modules.values())
                if isinstance(getattr(module, "VERSION", None), int) and hasattr(module, "VERSION_NAME")}
    assert set(declared) == RECORDED_MODULE_NAMES
    assert keys.module_versions() == {f"module:{name}": version for name, version in sorted(declared.items())}
    for name, version in declared.items():
        assert keys.current(f"module:{name}") == version, name


def test_every_version_a_published_summary_records_still_resolves():
    from flatlib import runner

    runner.staleness({"computations": {"module:flatlib.train": 0}})  # imports the versions' homes
    recorded = set()
    for path in sorted((ROOT / "book").glob("*/summary.json")) + sorted((ROOT / "book").glob("*/*/summary.json")):
        recorded.update(json.loads(path.read_text()).get("computations") or {})
    assert recorded, "no published summary records versions"
    missing = sorted(name for name in recorded if keys.current(name) is None)
    assert not missing, f"recorded versions the code no longer declares: {missing}"
