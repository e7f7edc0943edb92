"""The finite domain of ``flatlib.finite``: bit-string tasks and their rules, the junta tables consistent
with a training set, the learners that choose among them, and how a choice scores.

Part of ``flatlib.finite``, which re-exports it and whose ``VERSION`` versions its numbers.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

# 2^16 inputs: the domain, its labels and a network's outputs on it stay cheap (the number of
# junta tables grows as 2^bits too, so large domains want a small max_arity).
MAX_BITS = 16


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 2:
        raise ValueError(f"bits must be an integer of at least 2, got {bits!r}")
    if bits > MAX_BITS:
        raise ValueError(f"a domain of {bits}-bit strings has 2^{bits} inputs, too many to enumerate here; "
                         f"the largest that fits is bits={MAX_BITS}")


def domain(bits: int) -> np.ndarray:
    """Every bit string of length ``bits``, one per row (uint8), in counting order: row i is
    the binary expansion of i, most significant bit first."""
    _check_bits(bits)
    codes = np.arange(2 ** bits, dtype=np.int64)
    return ((codes[:, None] >> np.arange(bits - 1, -1, -1)) & 1).astype(np.uint8)


def _half(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and second halves of each string read as binary numbers (odd length: the
    middle bit goes to neither)."""
    h = x.shape[1] // 2
    weights = lambda n: 2 ** np.arange(n - 1, -1, -1)  # noqa: E731
    return x[:, :h] @ weights(h), x[:, -h:] @ weights(h)


RULES = {
    # exchangeable demands: every completion of the training labels equally likely
    "exchangeable": lambda x, rng: rng.integers(0, 2, len(x)).astype(np.uint8),
    "parity2": lambda x, rng: x[:, 0] ^ x[:, 1],
    "parity3": lambda x, rng: x[:, 0] ^ x[:, 1] ^ x[:, 2],
    "and2": lambda x, rng: x[:, 0] & x[:, 1],
    "majority3": lambda x, rng: (x[:, :3].sum(1) >= 2).astype(np.uint8),
    # the carry out of adding the two halves: the top bit of binary addition
    "sum_carry": lambda x, rng: (np.add(*_half(x)) >= 2 ** (x.shape[1] // 2)).astype(np.uint8),
}
# The fewest bits each rule reads.
MIN_BITS = {"exchangeable": 2, "parity2": 2, "parity3": 3, "and2": 2, "majority3": 3, "sum_carry": 2}


def check_rule(rule: str, bits: int) -> None:
    """Refuse an unknown rule (listing the known ones) or a domain too short for it."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from {sorted(RULES)}")
    if bits < MIN_BITS[rule]:
        raise ValueError(f"rule {rule!r} reads {MIN_BITS[rule]} bits; the domain has {bits}")


def labels(rule: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The labels ``rule`` gives the strings ``x`` (``"exchangeable"`` draws them, from a stream
    of ``seed`` of their own)."""
    check_rule(rule, x.shape[1])
    return RULES[rule](x, np.random.default_rng([seed, 1])).astype(np.uint8)


@dataclass(frozen=True)
class Task:
    """A domain, its target labels, and one training set (indices into the domain)."""

    bits: int
    rule: str
    x: np.ndarray
    y: np.ndarray
    train: np.ndarray  # sorted indices of the training inputs

    @property
    def unseen(self) -> np.ndarray:
        return np.setdiff1d(np.arange(len(self.x)), self.train)


def task(bits: int, rule: str, train_size: int, seed: int = 0) -> Task:
    """The domain of ``bits``-bit strings labelled by ``rule``, with a uniformly random
    training set of ``train_size`` inputs (``seed`` draws it, and an exchangeable rule's labels)."""
    x = domain(bits)
    if not 1 <= train_size < len(x):
        raise ValueError(f"train_size must be between 1 and {len(x) - 1} for {bits} bits, got {train_size}")
    rng = np.random.default_rng([seed, 0])
    y = labels(rule, x, seed)
    train = np.sort(rng.choice(len(x), train_size, replace=False))
    return Task(bits, rule, x, y, train)


# ----------------------------------------------------------------------------- junta tables

@dataclass(frozen=True)
class Hypothesis:
    """A junta table: positions ``J``, and per seen pattern (as an integer code) its label."""

    J: tuple[int, ...]
    table: dict
    bits: int

    def codes(self, x: np.ndarray) -> np.ndarray:
        if not self.J:
            return np.zeros(len(x), dtype=np.int64)
        return x[:, list(self.J)].astype(np.int64) @ (2 ** np.arange(len(self.J) - 1, -1, -1))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(committed mask, label where committed, 0 elsewhere) on the strings ``x``."""
        codes = self.codes(x)
        committed = np.array([c in self.table for c in codes], dtype=bool)
        label = np.array([self.table.get(c, 0) for c in codes], dtype=np.uint8)
        return committed, label

    def log2_weakness(self) -> int:
        """log2 of the number of full labellings of the domain this hypothesis is compatible
        with: the number of inputs it leaves open, 2^bits - (seen patterns) 2^(bits - |J|)."""
        return 2 ** self.bits - len(self.table) * 2 ** (self.bits - len(self.J))

    def description_length(self) -> int:
        """Bits to write the hypothesis in the stated language (module docstring)."""
        return (math.ceil(math.log2(self.bits + 1)) + len(self.J) * math.ceil(math.log2(self.bits))
                + len(self.table) * (len(self.J) + 1))


def fit_table(t: Task, J: tuple[int, ...]) -> Hypothesis | None:
    """The junta table on ``J`` read off the training set, or None if the training set gives
    one J-pattern two labels (no hypothesis on J is consistent)."""
    h = Hypothesis(tuple(J), {}, t.bits)
    codes = h.codes(t.x[t.train])
    table: dict = {}
    for code, label in zip(codes.tolist(), t.y[t.train].tolist()):
        if table.setdefault(code, label) != label:
            return None
    return Hypothesis(tuple(J), table, t.bits)


def consistent(t: Task, max_arity: int) -> list[Hypothesis]:
    """Every junta table of at most ``max_arity`` positions consistent with the training set."""
    if not 0 <= max_arity <= t.bits:
        raise ValueError(f"max_arity must be between 0 and bits={t.bits}, got {max_arity}")
    found = []
    for arity in range(max_arity + 1):
        for J in itertools.combinations(range(t.bits), arity):
            h = fit_table(t, J)
            if h is not None:
                found.append(h)
    return found


def check_language(bits: int, rules, train_size: int, max_arity: int, draws: int, seed: int = 0) -> None:
    """Refuse, with the reason, parameters under which ``compare`` (for each rule of ``rules``)
    would stop: a domain too short for a rule, a training set that leaves no input unseen, a
    ``max_arity`` above ``bits``, or a draw whose training set no junta table of at most
    ``max_arity`` positions is consistent with (``choose``: "no consistent hypothesis").

    Exact, and cheaper than ``compare``. Consistency is monotone in J: two training inputs that
    share a pattern on J' share it on every J inside J', so a table consistent on J is
    consistent on every superset. Hence a consistent table of at most ``max_arity`` positions
    exists iff one of exactly ``max_arity`` positions does; with ``max_arity = bits`` the
    memoriser (J = every position) always is, and nothing need be drawn. Otherwise every draw's
    training set is drawn as ``compare`` draws it, and the C(bits, max_arity) position sets are
    tried until one is consistent (at most what ``compare`` enumerates)."""
    _check_bits(bits)
    for rule in rules:
        check_rule(rule, bits)
    if not 1 <= train_size < 2 ** bits:
        raise ValueError(f"train_size must be between 1 and 2^bits - 1 = {2 ** bits - 1} (some input must stay "
                         f"unseen), got {train_size}")
    if not 0 <= max_arity <= bits:
        raise ValueError(f"max_arity must be between 0 and bits = {bits}, got {max_arity}")
    if max_arity == bits:
        return
    for rule in rules:
        for draw in range(draws):
            t = task(bits, rule, train_size, seed=seed + draw)
            x, y = t.x[t.train].astype(np.int64), t.y[t.train].astype(np.int64)
            if not any(_consistent_on(x, y, J) for J in itertools.combinations(range(bits), max_arity)):
                raise ValueError(
                    f"with max_arity = {max_arity} below bits = {bits}, the training set of draw {draw} of rule "
                    f"{rule!r} ({train_size} inputs) fits no junta table of at most {max_arity} positions, so the "
                    f"learners have no consistent hypothesis to choose from; raise max_arity (max_arity = bits "
                    f"always works: the memoriser is in the language) or lower train_size")


def _consistent_on(x: np.ndarray, y: np.ndarray, J: tuple[int, ...]) -> bool:
    """Whether no pattern of the strings ``x`` on positions ``J`` carries two labels of ``y``: as
    many distinct (pattern, label) pairs as distinct patterns."""
    codes = x[:, list(J)] @ (2 ** np.arange(len(J), dtype=np.int64))
    return len(np.unique(codes)) == len(np.unique(2 * codes + y))


LEARNERS = ("weakest", "shortest", "any")


def choose(hypotheses: list[Hypothesis], learner: str, rng: np.random.Generator) -> Hypothesis:
    """The weakest (most inputs left open), the shortest (least description length) or any one
    of ``hypotheses`` drawn uniformly at random ("any"); ties are broken uniformly at random."""
    if not hypotheses:
        raise ValueError("no consistent hypothesis in the language: raise max_arity")
    if learner == "any":
        return hypotheses[int(rng.integers(len(hypotheses)))]
    if learner == "weakest":
        scores = np.array([h.log2_weakness() for h in hypotheses])
        best = np.flatnonzero(scores == scores.max())
    elif learner == "shortest":
        scores = np.array([h.description_length() for h in hypotheses])
        best = np.flatnonzero(scores == scores.min())
    else:
        raise ValueError(f"unknown learner {learner!r}; choose from {list(LEARNERS)}")
    return hypotheses[int(best[rng.integers(len(best))])]


def score(t: Task, committed: np.ndarray, label: np.ndarray) -> dict:
    """The three scores of a hypothesis given on the *unseen* inputs of ``t`` as a committed
    mask and labels (module docstring)."""
    unseen = t.unseen
    committed, label = committed[unseen], label[unseen]
    right = committed & (label == t.y[unseen])
    wrong = committed & (label != t.y[unseen])
    open_ = ~committed
    return {"accuracy": float((right.sum() + 0.5 * open_.sum()) / len(unseen)),
            "worst_case": float(0.5 * open_.sum() / len(unseen)),
            "bennett": float(wrong.sum() == 0), "bennett_strict": float(wrong.sum() == 0 and open_.sum() == 0),
            "committed": int(committed.sum()), "open": int(open_.sum())}


# Inputs x masks compared at once by ``hamming_radius`` (bounds its memory to tens of megabytes).
_HAMMING_CHUNK = 2 ** 22


def hamming_radius(values: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """For each input in ``inputs`` (indices into the domain), the smallest Hamming distance r at
    which some input of the domain has a value other than its own in ``values`` (one value per
    input of the domain, in ``domain``'s counting order, so input i is the bit string of i and
    flipping bits is an exclusive or with a mask). An input whose value the whole domain
    shares gets bits + 1, one more than any distance in the domain (as a ray that never
    changes label stops at the cap on MNIST). The rings r = 1, 2, ... are searched in turn, so
    an input costs the inputs within its radius."""
    values = np.asarray(values)
    bits = int(round(math.log2(len(values))))
    if len(values) != 2 ** bits or bits < 1:
        raise ValueError(f"values must give one value per input of a domain (2^bits of them), got {len(values)}")
    inputs = np.asarray(inputs, dtype=np.int64)
    codes = np.arange(2 ** bits, dtype=np.int64)
    weight = np.zeros(len(codes), dtype=np.int64)
    for b in range(bits):
        weight += (codes >> b) & 1
    radius = np.full(len(inputs), bits + 1, dtype=np.int64)
    pending = np.arange(len(inputs))
    for r in range(1, bits + 1):
        masks = codes[weight == r]
        step = max(1, _HAMMING_CHUNK // len(masks))
        found = np.zeros(len(pending), dtype=bool)
        for i in range(0, len(pending), step):
            at = inputs[pending[i:i + step]]
            found[i:i + step] = (values[at[:, None] ^ masks[None, :]] != values[at][:, None]).any(1)
        radius[pending[found]] = r
        pending = pending[~found]
        if not len(pending):
            break
    return radius


def hypothesis_values(h: Hypothesis, x: np.ndarray) -> np.ndarray:
    """What junta table ``h`` states at each string of ``x``: its label (0 or 1) where it
    commits, 2 where it leaves the input open, so that moving from a committed input to an open
    one is a change of label (the statement no longer gives it)."""
    committed, label = h.predict(x)
    return np.where(committed, label, 2).astype(np.uint8)


def mean_hamming_radius(values: np.ndarray, inputs: np.ndarray) -> float:
    """The geometric reading of weakness on the finite domain: the mean over ``inputs`` (the
    training inputs, where MNIST's ``weakness_input_volume`` starts its rays and where every
    consistent hypothesis commits) of ``hamming_radius``, in bits flipped. Larger = weaker
    under this reading (the label holds further out)."""
    return float(hamming_radius(values, inputs).mean())


def compare(bits: int, rule: str, train_size: int, max_arity: int, draws: int, seed: int = 0):
    """One row per (draw, learner): a fresh training set (and, for the exchangeable rule, fresh
    labels) per draw, the hypothesis each learner picks from the consistent junta tables, its
    exact log2 weakness (the literal reading), the geometric reading ``hamming_radius``
    (``mean_hamming_radius`` of ``hypothesis_values`` from the training inputs), its
    description length and scores on the unseen inputs."""
    import pandas as pd

    rows = []
    for draw in range(draws):
        t = task(bits, rule, train_size, seed=seed + draw)
        candidates = consistent(t, max_arity)
        rng = np.random.default_rng([seed, draw])
        for learner in LEARNERS:
            h = choose(candidates, learner, rng)
            committed, label = h.predict(t.x)
            rows.append({"draw": draw, "learner": learner, "arity": len(h.J), "J": "".join(map(str, h.J)),
                         "log2_weakness": h.log2_weakness(),
                         "hamming_radius": mean_hamming_radius(hypothesis_values(h, t.x), t.train),
                         "description_length": h.description_length(),
                         "candidates": len(candidates), **score(t, committed, label)})
    return pd.DataFrame(rows)
