"""Optimised PAC-Bayes certificates: the posterior chosen to minimise the bound (Dziugaite & Roy
2017), with the prior at the initial weights or learned on data the bound does not see
(Perez-Ortiz, Rivasplata, Shawe-Taylor & Szepesvari 2021), certified with many weight draws.

The posterior is Q = N(mu, diag s^2) over the weights of a ReLU MLP, the prior P = N(p, s_P^2 I).
With probability at least 1 - delta over the bound's sample S of n examples, for every Q and for
every prior scale s_P of the grid ``PRIOR_SCALES`` (J values, fixed before any data is seen, so a
union bound costs ln J),

    kl( e_S(Q) || e(Q) ) <= ( KL(Q || P) + ln(2 sqrt(n) J / delta) ) / n        (Maurer 2004),

where e_S(Q) and e(Q) are the expected 0-1 errors of a network drawn from Q on S and on the data
distribution; the certificate is the largest e(Q) this allows (``pacbayes.kl_inverse``).
The prior's centre p is the network's initial weights (drawn from its seed before any data) or
the weights of a network trained on a part of the training split disjoint from S: either way P
depends on nothing in S. The posterior may depend on anything. Every prior centre tried on the same
sample must be paid for: ``priors_tried`` multiplies J. One approximation remains: the book's
training subsets are class-stratified (``flatlib.data.load``), so a sample that is such a subset,
or the images outside one, has class counts tied to the split's (to within an image per class)
rather than varying as an i.i.d. sample's would. The bound treats the split as an i.i.d. sample and
this coupling as negligible; the chapters that report certificates say so.

e_S(Q) is estimated by Monte Carlo: each of ``passes`` passes over S evaluates every example under
its own independent draw from Q. The m = passes * n errors are independent [0, 1] variables whose
mean has expectation exactly e_S(Q), so with probability at least 1 - delta_mc
e_S(Q) <= kl^{-1}(mean, ln(1 / delta_mc) / m) (the Chernoff bound in kl form, Hoeffding 1963,
which holds for independent, not necessarily identical, [0, 1] variables; Langford & Caruana 2002
use it for the draws). A draw per example costs little by the local reparameterisation of Kingma,
Salimans & Welling (2015): for one input, the pre-activations of a layer whose weights are
independent Gaussians are themselves independent Gaussians (mean h mu^T, variance h^2 s^2^T), so
sampling them layer by layer is distributed exactly as evaluating the input under a full weight
draw, at the cost of one normal per unit instead of one per weight. The certificate then holds with
probability at least 1 - delta - delta_mc.

The posterior is optimised by stochastic gradient descent (momentum, or Adam) on the
reparameterised Gaussian of a relaxation of the bound (Perez-Ortiz et al.'s f_quad,
``quad_objective``, or f_classic, ``classic_objective``) with the 0-1 error replaced by the
cross-entropy bounded by clamping p(y|x) at ``pmin`` and scaled to [0, 1]; during optimisation the
prior scale is the one minimising the KL (closed form), and the certificate then takes the best
scale of the grid.

``CertificateSpec`` names a certificate of a network of the store (``flatlib.study``), and
``certificate`` computes it or reads it from the store, keyed by the spec, the network's key, the
version of its kind (``VERSIONS``) and the environment class (``flatlib.keys``).
"""
from __future__ import annotations

from flatlib.experiments.certificate_store import (  # noqa: F401 (re-exported)
    VERSIONS,
    CertificateSpec,
    certificate,
    certificate_table,
    compute,
    samples,
    starting_scale,
)
from flatlib.experiments.posteriors import (  # noqa: F401 (re-exported)
    DELTA,
    DELTA_MC,
    KL_TOL,
    OBJECTIVES,
    OPTIMIZERS,
    PMIN,
    PRIOR_SCALES,
    PRIORS,
    SIGMA_STARTS,
    STARTS,
    TRAIN_SIZE,
    Certificate,
    CertificateError,
    Posterior,
    best_prior_scale,
    bounded_cross_entropy,
    certify,
    check_delta,
    check_split,
    classic_objective,
    complexity,
    estimate,
    gaussian_kl,
    kl_upper,
    linear_layers,
    optimise,
    over_posteriors_tried,
    quad_objective,
    state_tensors,
    stochastic_errors,
    stochastic_logits,
    weight_tensors,
)
