"""The library's layout: where each module lives, what it may import, and the names that tie
published results to the code (``flatlib.keys``)."""
import ast
import importlib
import json
import re
import sys
from pathlib import Path

import flatlib
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


# ----------------------------------------------------------------------------- the layout

PACKAGE = ROOT / "flatlib"
RANK = {layer: rank for rank, layer in enumerate(flatlib.LAYERS)}  # infrastructure < engine < experiments < ...
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources():
    return {_module_name(path): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    """The layer of a flatlib module by its import name (None for the package itself and
    ``flatlib.__main__``, the command line, which may import anything)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def imported_modules(source: str, modules: set[str]) -> list[str]:
    """Every flatlib module ``source`` imports, anywhere in it (function bodies included): for
    ``from flatlib.x import y``, ``flatlib.x.y`` when that is a module, else ``flatlib.x``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("flatlib.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "flatlib":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                flat = node.module == "flatlib" and alias.name in flatlib.MODULES  # a flat name: not a home
                found.append(candidate if candidate in modules or flat else node.module)
    return found


def layering_violations(module: str, source: str, modules: set[str]) -> list[str]:
    """The imports of ``module`` that break the layering: a module of a later layer, or a
    module by its flat name (``from flatlib import study``), which hides its layer."""
    own = layer_of(module)
    problems = []
    for imported in imported_modules(source, modules):
        if imported != "flatlib" and imported not in modules:
            problems.append(f"{module} imports {imported} by a name that is not its home")
            continue
        theirs = layer_of(imported)
        if own is not None and theirs is not None and RANK[theirs] > RANK[own]:
            problems.append(f"{module} ({own}) imports {imported} ({theirs})")
    return problems


def private_imports(module: str, source: str) -> list[str]:
    """The leading-underscore names ``source`` takes from another flatlib module: imported
    (``from flatlib.x import _y``, a module ``flatlib._x``) or read as an attribute of an
    imported flatlib module (``study._TASK_LOCK``). Dunder names (``__file__``) are public."""
    def private(name):
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    bound, found = {}, []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "flatlib":
            found += [f"{node.module}" for part in node.module.split(".") if private(part)]
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{node.module}.{alias.name}")
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "flatlib":
                    found += [alias.name for part in alias.name.split(".") if private(part)]
                    bound[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name or "flatlib"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound \
                and private(node.attr) and bound[node.value.id] != module:
            found.append(f"{bound[node.value.id]}.{node.attr}")
    return found


def test_layering_checker_catches_upward_lazy_and_flat_imports():
    modules = {"flatlib.engine.train", "flatlib.experiments.study", "flatlib.infrastructure.store"}
    assert layering_violations("flatlib.engine.train", "from flatlib.infrastructure import store\n", modules) == []
    upward = "def f():\n    from flatlib.experiments import study\n    return study\n"
    assert layering_violations("flatlib.engine.train", upward, modules) == [
        "flatlib.engine.train (engine) imports flatlib.experiments.study (experiments)"]
    assert layering_violations("flatlib.infrastructure.store", "import flatlib.engine.train\n", modules)
    assert layering_violations("flatlib.engine.train", "from flatlib import study\n", modules)


def test_private_name_checker_catches_imported_and_attribute_names():
    assert private_imports("flatlib.a", "from flatlib.experiments.study import _one_thread\n") == [
        "flatlib.experiments.study._one_thread"]
    assert private_imports("flatlib.a", "from flatlib.experiments import study\nx = study._TASK_LOCK\n") == [
        "flatlib.experiments.study._TASK_LOCK"]
    assert private_imports("flatlib.a", "def f():\n    import flatlib._io\n") == ["flatlib._io"]
    assert private_imports("flatlib.a", "from flatlib.engine import data\nprint(data.__file__, data.load)\n") == []


def test_every_module_keeps_to_its_layer():
    sources = _sources()
    modules = set(sources)
    assert {layer_of(m) for m in modules} - {None} == set(RANK)
    for layer, names in flatlib.LAYERS.items():  # the map and the folders agree
        assert {m.rpartition(".")[2] for m in modules if layer_of(m) == layer and m != f"flatlib.{layer}"} \
            == set(names), layer
    problems = [p for module, source in sources.items() for p in layering_violations(module, source, modules)]
    assert not problems, "\n".join(problems)


def test_no_module_takes_another_modules_private_name():
    problems = [f"{module}: {name}" for module, source in _sources().items()
                for name in private_imports(module, source)]
    assert not problems, "\n".join(problems)


def test_modules_are_short():
    lengths = {path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines())
               for path in PACKAGE.rglob("*.py")}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert not too_long, f"over {MAX_LINES} lines (split along a seam): {too_long}"


def test_the_readme_places_each_module_in_its_layer():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Architecture"):text.index("## Layout")]
    for layer, names in flatlib.LAYERS.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{layer}/`"))
        listed = set(re.findall(r"`([a-z_]+)`", row.split("|")[2]))
        assert listed and listed <= set(names), (layer, sorted(listed - set(names)))


def test_flat_names_reach_the_modules_at_their_homes():
    import flatlib.study
    from flatlib import measures, study

    assert study is flatlib.study is flatlib.experiments.study
    assert measures.MEASURES is importlib.import_module("flatlib.engine.measures").MEASURES
    for flat, home in flatlib.MODULES.items():
        assert importlib.import_module(f"flatlib.{flat}") is importlib.import_module(home), flat
