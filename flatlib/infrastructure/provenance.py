"""The version of a module's code, derived from the code itself: a hash of the source of the
module and of every ``flatlib`` module it imports, directly or through others.

The imports are read from the source with ``ast`` (``import flatlib.x``, ``from flatlib import
x``, ``from flatlib.x import y``, relative imports, and imports inside functions), so a cache
key built from ``code_version`` changes whenever code that could change the cached result
changes, and nothing has to be bumped by hand. Importing ``flatlib.x`` runs
``flatlib/__init__.py`` too, so the package's ``__init__`` is always part of the closure.
Imports by name at run time (``importlib.import_module``) are not seen: flatlib's
(the flat names of ``flatlib/__init__.py``, ``keys.current``) import a module by a name read
from data, and flatlib's own modules import each other by their homes' names
(``tests/test_architecture.py`` refuses a flat name), so the closure sees every edge.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "flatlib"
_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the package

# path -> ((mtime_ns, size), imported module names, sha256 of the source): each file is read
# and parsed once per edit, so a key costs a few stat calls.
_PARSED: dict[Path, tuple[tuple[int, int], frozenset[str], bytes]] = {}


def _source(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _with_parents(names) -> set[str]:
    """Every package an import of each name runs: a.b.c runs a, a.b and a.b.c."""
    parts = [name.split(".") for name in names]
    return {".".join(p[:i]) for p in parts for i in range(1, len(p) + 1)}


def _imports(module: str, path: Path) -> frozenset[str]:
    """The names of the modules (and, for ``from m import x``, the candidates m.x) that the
    source at ``path`` imports anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts):
                    continue  # beyond the top-level package; Python refuses it too
                base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # non-modules are dropped later
    return frozenset(found)


def _parsed(module: str, path: Path) -> tuple[frozenset[str], bytes]:
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _PARSED.get(path)
    if cached is None or cached[0] != stamp:
        raw = path.read_bytes()
        cached = (stamp, _imports(module, path), hashlib.sha256(raw).digest())
        _PARSED[path] = cached
    return cached[1], cached[2]


def import_closure(module: str, root: Path | None = None) -> dict[str, Path]:
    """``module`` and every ``flatlib`` module it imports, directly or transitively, with its
    package ``__init__``s: module name -> source file, sorted by name. ``root`` is the folder
    holding the package (default: the one this file lives in)."""
    root = _ROOT if root is None else Path(root)
    closure: dict[str, Path] = {}
    pending = sorted(_with_parents([module]))
    while pending:
        name = pending.pop()
        if name in closure or not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        path = _source(name, root)
        if path is None:
            if name == module:
                raise ValueError(f"no source file for module {module!r} under {root}")
            continue  # a name imported from a module, not a module
        closure[name] = path
        pending.extend(_with_parents(_parsed(name, path)[0]))
    return dict(sorted(closure.items()))


def code_version(module: str, root: Path | None = None) -> str:
    """A hash (16 hex digits) of the sources of ``import_closure(module)``, in path order:
    it changes when any of them changes, and only then.

    For the running package (``root`` None) the version is read once per process: the code
    that runs is the code that was imported, so a file edited on disk during a long run must
    not re-key the numbers the old code goes on computing."""
    if root is None:
        return _live_version(module)
    return _version_of(module, Path(root))


@functools.cache
def _live_version(module: str) -> str:
    return _version_of(module, _ROOT)


def _version_of(module: str, root: Path) -> str:
    digest = hashlib.sha256()
    for name, path in sorted(import_closure(module, root).items(), key=lambda item: item[1]):
        digest.update(name.encode() + b"\0" + _parsed(name, path)[1])
    return digest.hexdigest()[:16]


def public_modules(root: Path | None = None) -> list[str]:
    """The import names of the package's modules on disk under ``root`` (default: the running
    package's folder), sub-packages included, leaving out those with a private part
    (``flatlib._io``, ``flatlib.__main__``) and the package itself."""
    root = _ROOT if root is None else Path(root)
    names = set()
    for path in (root / PACKAGE).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if len(parts) > 1 and not any(part.startswith("_") for part in parts):
            names.add(".".join(parts))
    return sorted(names)


def loaded_modules() -> list[str]:
    """The import names of the package's public modules this process has loaded, each once:
    a module also reachable by its historical flat name (``flatlib/__init__.py``) is listed
    by the name of its home."""
    import sys

    names = {getattr(module, "__name__", "") for module in list(sys.modules.values())}
    return sorted(name for name in names if name.startswith(PACKAGE + ".")
                  and not any(part.startswith("_") for part in name.split(".")))
