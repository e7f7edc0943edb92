"""flatlib: the library behind the executable paper "Flat minima, revisited".

Everything that computes lives here; the chapters in ``book/`` only set parameters, call
flatlib and plot. The modules live in four sub-packages by role (README.md, "Architecture"):
``infrastructure`` (the store, keys, executors), ``engine`` (data, training, curvature,
measures, statistics), ``experiments`` (tables, designs and certificates built from the engine)
and ``publishing`` (the chapter runner, summaries, the scoreboard, figures, verdicts). Each
layer imports only the layers before it (``tests/test_architecture.py``).

Every module is also reachable by its flat name, as the chapters and published notebooks import
it: ``from flatlib import study``, ``import flatlib.measures``. ``MODULES`` maps each flat name to
its home; both names give the same module object, so a patch through either reaches the code.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

LAYERS = {
    "infrastructure": ("store", "keys", "threads", "output", "provenance", "executors"),
    "engine": ("data", "models", "train", "networks", "hessian", "hessian_diagonal", "reparam", "measures",
               "measure_registry", "sharpness", "weakness", "margins", "pacbayes", "stats", "correlation",
               "meta_analysis", "reliability", "resampling", "ensemble", "stacked"),
    "experiments": ("study", "atlas", "regularised", "interpolators", "finite", "finite_domain", "finite_networks",
                    "landscape", "batchsize", "certificates", "posteriors", "certificate_store", "fingerprints",
                    "canaries"),
    "publishing": ("runner", "manifest", "execution", "notebooks", "staleness", "report", "scoreboard", "compare",
                   "plots", "plot_style", "figures_landscape", "figures_claims", "params", "claims", "claim_figures",
                   "verdicts", "rules_measures", "rules_bounds", "rules_minima", "stability"),
}

# flat name -> the module's home; ``_io`` and ``_version`` are the old names of two renamed ones.
MODULES = {name: f"{__name__}.{layer}.{name}" for layer, names in LAYERS.items() for name in names}
MODULES.update({"_io": MODULES["output"], "_version": MODULES["provenance"]})


class _FlatNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``flatlib.<flat name>`` as the module at its home, under both names."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(MODULES[spec.name.rpartition(".")[2]])

    def exec_module(self, module):
        pass  # the module ran at its home


if not any(isinstance(finder, _FlatNames) for finder in sys.meta_path):
    sys.meta_path.insert(0, _FlatNames())  # before any finder that could find a stale flat file


def __getattr__(name: str):
    if name in MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
