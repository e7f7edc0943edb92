"""The claims under test: the paper's figures as data, and every chapter's verdict rule.

One home for what decides the scoreboard. A chapter computes its numbers, passes them to the
rule of its claim here and reports what comes back; no verdict logic lives in a notebook. The
rules were fixed, with the unit tests in ``tests/test_claims.py``, before the full runs they
judge. A rule returns a :class:`Verdict`: the headline verdict and the sub-claims it rests on,
each with its own state:

* ``supported``: significant at ``alpha``, in the claimed direction;
* ``contradicted``: significant, in the opposite direction;
* ``not supported``: not significant, and the data exclude an effect of the claimed size
  (the interval stays below ``SMALLEST_EFFECT`` in the claimed direction);
* ``inconclusive``: not significant, and the data cannot exclude it either.

A claim's headline verdict follows its *central* sub-claim (for C2 and C3, that weakness
predicts generalisation); the side claims can lower "supported" to "partly supported", never
raise a failed central claim.
"""
from __future__ import annotations

from flatlib.publishing.claim_figures import (  # noqa: F401 (re-exported)
    ALPHA,
    CLAIMS,
    RULE_VERSIONS,
    SMALLEST_EFFECT,
    STATES,
    VERDICTS,
    Claim,
    Figure,
    head_to_head_claim,
    paper,
)
from flatlib.publishing.rules_bounds import (  # noqa: F401 (re-exported)
    C5_READINGS,
    MIN_MEDIAN_KL,
    MIN_NETWORKS,
    batch_sweep,
    pacbayes_link,
    pacbayes_link_study,
    paper_gaps,
    saturated,
)
from flatlib.publishing.rules_measures import (  # noqa: F401 (re-exported)
    ATLAS_CLAIMED_SIGN,
    ATLAS_WEAKNESS,
    GEOMETRIC_WEAKNESS,
    GIVEN_FIT,
    LITERATURE_SIGN,
    MARGIN_MEASURES,
    atlas,
    beyond_margins,
    claimed_sign,
    combined_state,
    distinct_hypotheses,
    head_to_head,
    reparameterisation,
    robust_to_fit,
)
from flatlib.publishing.rules_minima import (  # noqa: F401 (re-exported)
    CLEAN_SEPARATION,
    GENERALISES_BELOW,
    MIN_AUC_DROP,
    REGULARISED_BETTER,
    REGULARISED_SHARPNESS,
    SMALLEST_ACCURACY_GAIN,
    finite_weakness,
    flattest_interpolators,
    regularised,
    regularised_first_rule,
)
from flatlib.publishing.verdicts import (  # noqa: F401 (re-exported)
    STABILITY_REPLICATES,
    Check,
    Verdict,
    correlation,
    describe_stability,
    directional,
    first_reaching,
    headline_verdict,
    negligible,
    percent,
    stability,
)
