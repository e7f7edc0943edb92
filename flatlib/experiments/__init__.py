"""Experiments: the tables and designs a chapter runs, built from the engine.

``study`` (network and measure tables, memoised in the store), ``atlas``, ``regularised``,
``interpolators``, ``finite``, ``landscape``, ``batchsize``, ``certificates`` (optimised PAC-Bayes
certificates) and ``fingerprints`` (the canaries that guard every version). It imports
``flatlib.engine`` and ``flatlib.infrastructure``, never ``flatlib.publishing``.
"""
