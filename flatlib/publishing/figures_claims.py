"""The figures of the atlas (C2+), regularised minima (C6), PAC-Bayes certificates (C5), flattest
interpolators (C7), weakness counted exactly and reparameterisation (C1), drawn in the book's
style (``flatlib.plots``, which re-exports them).
"""
from __future__ import annotations

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from flatlib.publishing.figures_landscape import wrapped_label
from flatlib.publishing.plot_style import CSS_PX_PER_INCH, DPI, FAMILY_COLORS, WIDTH_IN, figure

# ----------------------------------------------------------------------------- the robustness atlas (C2+)

def atlas_within(within, order: list[str], environments: list[str], datasets: list[str], seeds: int):
    """Every measure (rows, in ``order``) in every environment (columns), one heat map per dataset
    stacked above one another, coloured by the measure's Spearman rho with test accuracy within
    the environment; a dot marks a permutation p below 0.05. The environments are labelled once,
    under the lowest map."""
    height = 1.0 + 0.19 * len(order) * len(datasets) + 0.09 * max(map(len, environments))
    fig, axes = figure("grid", nrows=len(datasets), ncols=1, sharex=True, squeeze=False, height=height)
    for ax, dataset in zip(axes[:, 0], datasets):
        part = within[within["dataset"] == dataset]
        rho, p = (part.pivot(index="measure", columns="environment", values=v)
                  .reindex(index=order, columns=environments) for v in ("rho", "p"))
        image = ax.imshow(rho.to_numpy(float), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        ys, xs = np.nonzero(p.to_numpy(float) < 0.05)
        ax.scatter(xs, ys, s=6, color="black")
        ax.set_yticks(range(len(order)), order)
        ax.set_xticks(range(len(environments)), environments, rotation=90)
        ax.set_title(f"{dataset}: {seeds} seeds per environment")
        ax.grid(False)
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.5, label="Spearman rho")
    return fig


def atlas_across(across, order: list[str], datasets: list[str]):
    """Per measure (rows, in ``order``) and dataset: Jiang et al.'s Psi (left) and Dziugaite et
    al.'s sign errors over pairs of environments, mean (bar) and worst case (dot) (right)."""
    fig, (left, right) = figure("row", ncols=2, sharey=True, height=1.2 + 0.3 * len(order))
    height = 0.8 / len(datasets)
    for k, dataset in enumerate(datasets):
        part = across[across["dataset"] == dataset].set_index("measure").reindex(order)
        y = np.arange(len(order)) + k * height
        left.barh(y, part["psi"], height=height, color=f"C{k}")
        right.barh(y, part["sign_error_mean"], height=height, color=f"C{k}", label=dataset)
        right.scatter(part["sign_error_max"], y, s=14, color=f"C{k}", edgecolor="black", zorder=3, clip_on=False,
                      label=f"{dataset}: worst case")
    left.set_yticks(np.arange(len(order)) + height * (len(datasets) - 1) / 2, order)
    left.invert_yaxis()  # the heat map's top-to-bottom order
    left.axvline(0, color="black", lw=0.8)
    left.set(xlabel="Psi (oriented by the claimed sign)", title="Jiang et al.:\ngranulated Kendall")
    right.axvline(0.5, color="black", lw=0.8, ls="--")
    right.set(xlabel="sign error (0.5: a coin)", title="Dziugaite et al.:\nsign errors over pairs", xlim=(0, 1.03))
    fig.legend(*right.get_legend_handles_labels(), loc="outside upper center", ncol=2)
    return fig


def placeholder(text: str):
    """A small image that says ``text``, for a figure the page names but this run did not make
    (a dataset left out by the run's parameters); nothing is saved."""
    import io

    from IPython.display import Image

    fig, ax = figure("single", height=0.6)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return Image(data=buffer.getvalue(), width=round(WIDTH_IN["single"] * CSS_PX_PER_INCH))


# ----------------------------------------------------------------------------- regularised minima (C6)

REGIME_COLORS = {"baseline": "#333333", "weight_decay": "#4c72b0", "augmentation": "#55a868", "sam": "#c44e52",
                 "all": "#8172b2"}


def regularised_sharpness(part, regimes: list[str], title: str):
    """Test accuracy against raw (top eigenvalue) and invariant (adaptive) sharpness, one dot per
    network of one dataset (``part``), coloured by regime."""
    fig, axes = figure("row", ncols=2, sharey=True, height=3.2)
    for ax, (name, label) in zip(axes, [("top_eigenvalue", "top Hessian eigenvalue (raw)"),
                                        ("adaptive_sharpness", "adaptive sharpness (invariant)")]):
        for regime in regimes:
            rows = part[part["regime"] == regime]
            ax.scatter(rows[name], 100 * rows["test_acc"], s=20, color=REGIME_COLORS[regime], label=regime,
                       alpha=0.85)
        ax.set(xscale="log", xlabel=label)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(title="regime", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title)
    return fig


def effects_grid(effects, cells: list[tuple[str, str]], titles: dict, labels: list[str]):
    """One panel per metric (``titles``: metric -> title): each regime-dataset cell's paired
    difference from the baseline with its interval, filled where the interval excludes 0."""
    rows_of_panels = -(-len(titles) // 3)
    fig, axes = figure("grid", nrows=rows_of_panels, ncols=3, sharey=True, squeeze=False,
                       height=0.9 + rows_of_panels * (0.5 + 0.22 * len(cells)))
    for ax, (metric, title) in zip(axes.flat, titles.items()):
        rows = effects[effects["metric"] == metric].set_index(["dataset", "regime"]).loc[cells].reset_index()
        y = np.arange(len(rows))[::-1]
        for i, row in rows.iterrows():
            lo, hi, colour = row["ci_low"], row["ci_high"], REGIME_COLORS[row["regime"]]
            ax.errorbar(row["difference"], y[i], xerr=[[row["difference"] - lo], [hi - row["difference"]]], fmt="o",
                        color=colour, mfc=colour if lo > 0 or hi < 0 else "white", capsize=2)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_title(wrapped_label(title, 22))
        ax.set_yticks(y, labels)
    for ax in axes.flat[len(titles):]:
        ax.set_visible(False)
    fig.supxlabel("regime minus baseline (filled: the interval excludes 0)")
    return fig


# ----------------------------------------------------------------------------- PAC-Bayes certificates (C5)

def certificates_against_error(table, datasets: list[str], names: dict, sizes: list[int], optimizers: list[str]):
    """Each network's certificate against its test error (both %), one panel per dataset: colour
    for the training-set size, marker for the optimiser, each with its own short legend; the
    diagonal is where a certificate would equal the error it bounds."""
    from matplotlib.lines import Line2D

    fig, axes = figure("row", ncols=len(datasets), squeeze=False, height=3.4)
    colours = dict(zip(sizes, plt.cm.viridis(np.linspace(0.15, 0.85, len(sizes)))))
    markers = dict(zip(optimizers, "os^D"))
    for ax, dataset in zip(axes[0], datasets):
        part = table[(table["dataset"] == dataset) & (table["status"] == "ok")]
        for size in sizes:
            for optimizer in optimizers:
                rows = part[(part["optimizer"] == optimizer) & (part["train_size"] == size)]
                ax.scatter(100 * rows["test_error"], 100 * rows["certificate"], color=colours[size],
                           marker=markers[optimizer], s=24)
        high = 100 * max(part["certificate"].max(), part["test_error"].max()) * 1.05
        ax.plot([0, high], [0, high], color="grey", lw=0.8, ls="--")
        ax.set(xlabel="trained network's test error (%)", ylabel="certificate (%)", title=names[dataset])
    size_legend = axes[0, -1].legend(handles=[Line2D([], [], ls="", marker="o", color=c, label=f"{n:,}")
                                              for n, c in colours.items()], title="training set",
                                     loc="upper left", bbox_to_anchor=(1.02, 1))
    axes[0, -1].add_artist(size_legend)
    axes[0, -1].legend(handles=[Line2D([], [], ls="", marker=m, color="0.3", label=o) for o, m in markers.items()],
                       title="optimiser", loc="lower left", bbox_to_anchor=(1.02, 0))
    return fig


def forest(rows, labels: list[str], is_bound, xlabel: str):
    """Correlations with their 95 % intervals, one row each (``rows``: rho, ci_low, ci_high),
    labelled on the left; bounds as diamonds, weakness measures as dots."""
    from matplotlib.lines import Line2D

    fig, ax = figure("row", height=1.0 + 0.24 * len(rows))
    y = np.arange(len(rows))
    is_bound = np.asarray(is_bound, bool)
    rho = rows["rho"].to_numpy(float)
    ax.errorbar(rho, y, xerr=[rho - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - rho],
                fmt="none", ecolor="grey", lw=1)
    ax.scatter(rho[is_bound], y[is_bound], color=FAMILY_COLORS["bound"], marker="D", zorder=3)
    ax.scatter(rho[~is_bound], y[~is_bound], color=FAMILY_COLORS["weakness"], marker="o", zorder=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, xlim=(-1.05, 1.05))
    ax.set_xticks([-1, -0.5, 0, 0.5, 1])
    ax.legend(handles=[Line2D([], [], ls="", marker="D", color=FAMILY_COLORS["bound"], label="a bound"),
                       Line2D([], [], ls="", marker="o", color=FAMILY_COLORS["weakness"], label="a weakness measure")],
              loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
    return fig


# ----------------------------------------------------------------------------- flattest interpolators (C7)

KIND_COLORS = ["#4c72b0", "#55a868", "#1b9e77", "#c44e52", "#dd8452"]  # generalising kinds blue-green, others warm


def interpolators_benign(benign, kinds: list[str], non_generalising: list[str]):
    """Relative population loss against the raw Hessian trace (left; hollow: the non-generalising
    interpolators at their flattest rescaling) and against the trace minimised over rescalings
    (right), one colour per kind; one legend for both panels, above them."""
    fig, axes = figure("row", ncols=2, sharey=True, height=3.4)
    colours = dict(zip(kinds, KIND_COLORS))
    for kind in kinds:
        rows = benign[benign["kind"] == kind]
        axes[0].scatter(rows["trace"], rows["relative_loss"], color=colours[kind], label=kind, s=22)
        axes[1].scatter(rows["min_trace"], rows["relative_loss"], color=colours[kind], s=22)
        if kind in non_generalising:  # the rescaling attack: the same functions at their flattest
            axes[0].scatter(rows["min_trace"], rows["relative_loss"], facecolors="none", edgecolors=colours[kind],
                            label=f"{kind}, flattest rescaling", s=22)
    axes[0].set(xscale="log", xlabel="Hessian trace (raw)", ylabel="population loss / zero function's")
    axes[1].set(xscale="log", xlabel="Hessian trace, minimised over rescalings")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=3)
    return fig


def separation_bars(by_condition, clean: float):
    """Per condition of noise and approximation error, the AUC by which flatness separates the
    generalising interpolators from the others: by the minimised trace and by the raw trace
    after the rescaling attack; a coin (0.5) dashed, ``clean`` dotted."""
    fig, ax = figure("row", height=3.0)
    labels = [f"noise {r.noise:g}\napprox. {r.approximation:g}" for r in by_condition.itertuples()]
    x = np.arange(len(by_condition))
    ax.bar(x - 0.2, by_condition["AUC, minimised trace"], width=0.4, label="minimised trace",
           color=FAMILY_COLORS["weakness"])
    ax.bar(x + 0.2, by_condition["AUC, raw trace after the attack"], width=0.4, label="raw trace after the attack",
           color=FAMILY_COLORS["sharpness"])
    ax.axhline(0.5, color="0.4", ls="--", lw=0.8)
    ax.axhline(clean, color="0.4", ls=":", lw=0.8)
    ax.set_xticks(x, labels)
    ax.set(ylim=(0, 1.05), ylabel="AUC (generalising flatter)")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
    return fig


# ----------------------------------------------------------------------------- weakness counted exactly (C8)

SCORE_TITLES = {"accuracy": "accuracy (open: a coin)", "worst_case": "worst case over completions",
                "bennett": "Bennett's criterion", "bennett_strict": "Bennett's criterion, read strictly"}


def learner_scores(summary, rules: list[str], learners: list[str]):
    """Each learner's mean score over the draws with its 95 % interval, by target rule: one panel
    per score (``SCORE_TITLES``), two by two; one legend above."""
    fig, axes = figure("grid", nrows=2, ncols=2, sharey=True, height=5.6)
    width = 0.8 / len(learners)
    for ax, (score, title) in zip(axes.flat, SCORE_TITLES.items()):
        for k, learner in enumerate(learners):
            part = summary[summary["learner"] == learner].set_index("rule").reindex(rules)
            x = np.arange(len(rules)) + (k - (len(learners) - 1) / 2) * width
            ax.bar(x, part[score], width=width, yerr=part[f"{score}_pm"], label=learner, capsize=2, color=f"C{k}")
        ax.set_xticks(range(len(rules)), rules)
        ax.set(title=title, ylim=(0, 1.05))
    for ax in axes[:, 0]:
        ax.set_ylabel("mean over draws")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside upper center", ncol=len(learners))
    return fig


def estimators_against_exact(nets, probe_n: int):
    """Each MNIST estimator against the exact value it estimates on the finite domain, one dot
    per network: the sampled open-labels count against exact weakness, and the input-volume rays
    against the mean Hamming radius."""
    fig, (left, right) = figure("row", ncols=2, height=3.2)
    left.scatter(nets["exact_per_input"], nets["weakness_open_labels"], s=12, color=FAMILY_COLORS["weakness"])
    left.set(xlabel=wrapped_label("exact weakness (open labels per unseen input)", 30),
             ylabel=wrapped_label(f"weakness_open_labels ({probe_n} probes)", 30), title="the literal reading")
    right.scatter(nets["hamming_radius"], nets["weakness_input_volume"], s=12, color=FAMILY_COLORS["weakness"])
    right.set(xlabel="mean Hamming radius (bits)",
              ylabel=wrapped_label("weakness_input_volume (mean log L2 radius)", 30), title="the geometric reading")
    return fig


# ----------------------------------------------------------------------------- reparameterisation (C1)

def reparameterisation(alphas, inflation: dict, changes, families: dict, invariant: dict, predictions_changed: int):
    """Alpha-scaling one network. Above: the Hessian measures' inflation over the original against
    alpha (``inflation``: name -> values), alpha squared dashed, 100x dotted. Below: every measure's
    largest relative change over the alphas (``changes``: measure -> value; zero drawn at 1e-9),
    coloured by family (``families``), filled where the registry tags it invariant."""
    from matplotlib.lines import Line2D

    rows = list(changes)
    fig, (top, bottom) = figure("grid", nrows=2, ncols=1, height=3.4 + 0.2 * len(rows),
                                gridspec_kw={"height_ratios": [2.6, 0.8 + 0.2 * len(rows)]})
    for (name, values), marker in zip(inflation.items(), "os^D"):
        top.plot(alphas, values, marker=marker, label=name)
    top.plot(alphas, np.asarray(alphas, float) ** 2, "k--", lw=1, label=r"$\alpha^2$")
    top.axhline(100, color="grey", lw=0.8, ls=":")
    top.set(xscale="log", yscale="log", xlabel=r"$\alpha$", ylabel="inflation over the original",
            title=f"The Hessian under alpha-scaling; test predictions changed: {predictions_changed}")
    top.legend()
    y = np.arange(len(rows))
    for i, name in enumerate(rows):
        colour = FAMILY_COLORS[families[name]]
        bottom.scatter(max(changes[name], 1e-9), y[i], s=30, color=colour,
                       facecolors=colour if invariant[name] else "white", zorder=3)
    bottom.axvline(1e-3, color="grey", lw=0.8, ls=":")
    bottom.set_yticks(y, rows)
    bottom.invert_yaxis()
    bottom.set(xscale="log", xlabel="largest relative change over the alphas (zero drawn at 1e-9)",
               title="Every measure under alpha-scaling")
    handles = [Line2D([], [], ls="", marker="o", color=FAMILY_COLORS[f], label=f)
               for f in dict.fromkeys(families[name] for name in rows)]
    handles += [Line2D([], [], ls="", marker="o", color="0.3", label="tagged invariant"),
                Line2D([], [], ls="", marker="o", color="0.3", mfc="white", label="not invariant")]
    bottom.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig
