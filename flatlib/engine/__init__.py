"""Engine: the computations a result is made of.

``data``, ``models``, ``train`` and ``networks`` (a trained network, kept in the store),
``ensemble`` (seed ensembles, vectorised), ``hessian`` (curvature), ``reparam`` (function-preserving
reparameterisations), ``measures`` (the registry of flatness and generalisation measures),
``pacbayes`` and ``stats`` (correlation, inference, meta-analysis). It imports only
``flatlib.infrastructure`` and itself. A new measure goes in ``measures`` (README, "Add a measure").
"""
