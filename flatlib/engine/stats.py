"""Statistics with the uncertainty a reader needs, in four modules re-exported here (so a chapter
writes ``stats.spearman``, ``stats.pooled_correlation``): rank correlations with bootstrap
intervals and permutation p-values, the equivalence test, the weighted trend and the p-value
formatter (``flatlib.engine.correlation``); comparing and pooling correlations and differences
(``flatlib.engine.meta_analysis``); the reliability of a ranking and agreement across
environments (``flatlib.engine.reliability``); resampling a table (``flatlib.engine.resampling``).

This module's ``VERSION`` versions the numbers of all four: bump it with any change in them that
can move a number.
"""
from __future__ import annotations

from flatlib.engine.correlation import (  # noqa: F401 (re-exported)
    METHODS,
    SPEARMAN_Z_VARIANCE,
    ConfidenceInterval,
    CorrelationResult,
    DifferenceResult,
    EquivalenceResult,
    TrendResult,
    bootstrap_interval,
    correlation,
    correlation_table,
    format_pvalue,
    kendall,
    p_text,
    paired_arrays,
    paired_difference,
    partial_rows,
    partial_spearman,
    permutation_pvalue,
    spearman,
    spearman_equivalence,
    varies,
    weighted_trend,
)
from flatlib.engine.meta_analysis import (  # noqa: F401 (re-exported)
    PooledResult,
    WelchResult,
    fisher_z,
    fisher_z_test,
    fisher_z_two_sample,
    pooled_correlation,
    welch_difference,
)
from flatlib.engine.reliability import (  # noqa: F401 (re-exported)
    ReliabilityResult,
    granulated_kendall,
    kendall_tau_a,
    partial_rank_correlation,
    partial_table,
    ranking_reliability,
    sign_errors,
)
from flatlib.engine.resampling import (  # noqa: F401 (re-exported)
    bootstrap_tables,
    cluster_bootstrap,
    resample,
)

# The version of this module's computations (``flatlib.keys``): correlations, p-values, intervals,
# partial correlations and meta-analysis. Bump it with any change that can change their numbers, and
# re-record the fingerprints.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.stats"), kept wherever the module lives.
VERSION_NAME = "flatlib.stats"
