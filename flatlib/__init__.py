"""flatlib: the library behind the executable paper "Flat minima, revisited".

Everything that computes lives here; the chapters in ``book/`` only set parameters, call
flatlib and plot. See ``shared/DESIGN.md`` for the layout and the public surface.
"""
__version__ = "0.1.0"
