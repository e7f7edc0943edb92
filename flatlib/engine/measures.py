"""The registry of measures: name -> function(model, data, **options) -> float.

Every entry is tagged with its family (sharpness, weakness, simplicity, bound, margin) and
whether it is invariant under function-preserving reparameterisation (``flatlib.reparam``); the
tag is checked both ways by ``tests/test_measures.py``. Sign conventions: a larger sharpness
value means sharper, a larger weakness value means weaker (more is left open), a larger
simplicity value means simpler. The margin family holds the known predictors of generalisation
a weakness reading may stand in for (margins on the output and in input space, input
sensitivity, the path norm); each states its own sign (a larger margin is a larger margin, a
larger norm a larger norm). ``data`` is the network's training data, a ``flatlib.data.Dataset`` or an
``(inputs, targets)`` pair. Definitions with sources are in ``book/methods.md``.
"""
from __future__ import annotations

from flatlib.engine.margins import (  # noqa: F401 (re-exported)
    MARGIN_QUANTILE,
    SpectralComplexity,
    input_margin_distances,
    jacobian_norm,
    layer_chain,
    logit_margins,
    margin_input_distance,
    margin_output,
    margin_output_normalised,
    path_norm,
    spectral_complexity,
)
from flatlib.engine.measure_registry import (  # noqa: F401 (re-exported)
    EXTRA_FAMILIES,
    EXTRAS,
    FAMILIES,
    MEASURES,
    Measure,
    MeasureError,
    check_network,
    diagnostic,
    lookup,
    register,
    variant,
)
from flatlib.engine.sharpness import (  # noqa: F401 (re-exported)
    RescaledTrace,
    adaptive_sharpness,
    epsilon_sharpness,
    exact_diagonal,
    hessian_trace,
    hessian_trace_min_rescaling,
    min_trace_over_rescaling,
    relative_flatness,
    same_stamp,
    tensor_stamp,
    top_eigenvalue,
    worst_case_in_box,
)
from flatlib.engine.weakness import (  # noqa: F401 (re-exported)
    PROBE_SPLITS,
    coarsest_lossless_step,
    input_volume_capped,
    input_volume_radii,
    input_volume_rays,
    pacbayes_bound,
    pacbayes_mag_bound,
    pacbayes_mag_sharpness,
    pacbayes_sharpness,
    probe_inputs,
    simplicity_description_length,
    simplicity_l2,
    weakness_input_volume,
    weakness_open_labels,
)
