"""Weakness where it can be counted exactly: a finite domain of bit strings (claim C8).

The domain is every bit string of length ``bits`` (2^bits inputs), each labelled 0 or 1 by a
target ``rule``. A training set is a random subset of the domain with its labels; the inputs
outside it are the unseen ones, on which generalisation is scored.

**The language of hypotheses** (stated, fixed): a hypothesis is a *junta table*, a set J of at
most ``max_arity`` bit positions and, for every pattern of those bits seen in the training set,
the label the training set gives it. It labels an input whose J-pattern was seen and leaves
any other input open; it is consistent with the training set when no two training inputs share
a J-pattern but not a label. Its **exact weakness** is the number of full labellings of the
domain it is compatible with, 2^(number of open inputs): ``log2_weakness`` counts the open
inputs. Its **description length** in this language is the bits needed to write it: the size
of J (ceil(log2(bits + 1)) bits), each position in J (ceil(log2 bits) bits each), and one row
per seen pattern (|J| pattern bits and 1 label bit).

**Scoring** on the unseen inputs U, three ways, because the claim depends on which:

* ``accuracy``: a learner that must answer labels an open input by a fair coin, so the expected
  accuracy is (committed and correct + open / 2) / |U|;
* ``worst_case``: the accuracy when the demands are chosen against the learner among every
  completion of the training data (every committed label wrong): (open / 2) / |U|;
* ``bennett``: Bennett's criterion as his binary-arithmetic experiments score it (2023; the code
  of his technical appendix counts true positives): whether every correct label of U is among
  those the hypothesis allows, an open input allowing both: 1 if no committed label is wrong;
* ``bennett_strict``: the same with his definition of a model read strictly (the hypothesis
  must allow the correct label and no other): 1 if every unseen input is committed and right.

**Two readings of weakness**, as on MNIST: the *literal* one counts what a hypothesis leaves
open (``log2_weakness``; for a network, ``exact_log2_weakness``), and the *geometric* one asks
how far an input can move before its label changes (``mean_hamming_radius``: the Hamming
distance from each training input to the nearest input whose label differs, averaged).
"""
from __future__ import annotations

from flatlib.experiments.finite_domain import (  # noqa: F401 (re-exported)
    LEARNERS,
    MAX_BITS,
    MIN_BITS,
    RULES,
    Hypothesis,
    Task,
    check_language,
    check_rule,
    choose,
    compare,
    consistent,
    domain,
    fit_table,
    hamming_radius,
    hypothesis_values,
    labels,
    mean_hamming_radius,
    score,
    task,
)
from flatlib.experiments.finite_networks import (  # noqa: F401 (re-exported)
    NETWORK_MEASURES,
    exact_log2_weakness,
    learner_summary,
    network_hypothesis,
    network_table,
    train_network,
    weakest_minus,
)

# The version of this module's computations (``flatlib.keys``): the finite domain: tasks,
# hypotheses, learners, networks on bit strings. Bump it with any change that can change their
# numbers, and re-record the fingerprints.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.finite"), kept wherever the module lives.
VERSION_NAME = "flatlib.finite"
