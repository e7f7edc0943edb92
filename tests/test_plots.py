"""The book's figure style: sizes for the column, fonts a reader can read, and the problems a
drawn figure is checked for (a long legend, run-together ticks, text over another panel)."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from flatlib import plots


@pytest.fixture(autouse=True)
def _style():
    with plt.rc_context():
        plots.style()
        yield
    plt.close("all")


def test_a_saved_figure_records_its_size_and_every_font_it_uses(tmp_path):
    fig, axes = plots.figure("row", ncols=2)
    for ax in axes:
        ax.plot([0, 1, 2], [3, 1, 2], label="a line")
        ax.set(xlabel="x", title="a panel")
    axes[0].legend()
    path = plots.savefig(fig, tmp_path, "two_panels")
    found = plots.metadata(path)
    with Image.open(path) as image:  # the PNG's own size, read by PIL, not by the code under test
        assert (found["width_px"], found["height_px"]) == image.size
    assert abs(image.size[0] - 7 * plots.DPI) <= 0.05 * 7 * plots.DPI  # the column's 7 inches, bbox trimmed
    # the book's fonts as set in plots.FONTS: 10-pt titles and labels, 9-pt ticks and legend
    assert set(found["fonts_pt"]) == {9.0, 10.0}
    # 9 pt at 96/72 CSS px per point, shown at natural size: 12 px
    assert found["min_text_px"] == pytest.approx(12.0, rel=0.05)
    assert found["problems"] == [] and found["legend_entries"] == 1


def test_a_figure_wider_than_the_column_shrinks_with_its_text(tmp_path):
    fig, ax = plt.subplots(figsize=(14, 3))
    ax.plot([0, 1], [0, 1])
    ax.tick_params(labelsize=7)
    ax.set_xlabel("x", fontsize=7)
    found = plots.metadata(plots.savefig(fig, tmp_path, "wide"))
    natural = found["width_px"] / 2  # CSS px at 192 dpi
    # by hand: 7 pt = 9.33 CSS px at natural size, shrunk by 672 / natural
    assert found["min_text_px"] == pytest.approx(7 * 96 / 72 * 672 / natural, rel=1e-6)
    assert found["min_text_px"] < plots.MIN_TEXT_PX


def test_a_legend_of_more_than_eight_entries_is_a_problem():
    fig, ax = plots.figure("single")
    for k in range(9):
        ax.plot([0, 1], [k, k + 1], label=f"line {k}")
    ax.legend()
    assert any("legend of 9 entries" in p for p in plots.check(fig)["problems"])
    ax.legend(handles=ax.get_lines()[:8])
    assert plots.check(fig)["problems"] == []


def test_run_together_tick_labels_are_a_problem_and_the_styles_formatter_avoids_them():
    fig, ax = plots.figure("single")
    ticks = np.arange(-600000, 600000, 50000)
    ax.plot(ticks, np.zeros_like(ticks))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    assert any("x tick labels run into each other" in p for p in plots.check(fig)["problems"])
    fig, ax = plots.figure("single")
    ax.plot(ticks, np.zeros_like(ticks))  # the style's own locator and formatter
    assert plots.check(fig)["problems"] == []


def test_rotated_labels_printed_over_the_panel_below_are_a_problem():
    labels = [f"sgd n={n} w=256 b=64" for n in range(24)]

    def draw(fig, axes):
        for ax in axes:
            ax.imshow(np.random.default_rng(0).normal(size=(5, 24)), aspect="auto")
            ax.set_xticks(range(24), labels, rotation=60, ha="right")
        return plots.check(fig)["problems"]

    fig, axes = plt.subplots(2, 1, figsize=(7, 5))  # no layout: the labels land on the lower panel
    assert any("prints over the panel" in p for p in draw(fig, axes))
    fig, axes = plots.figure("grid", nrows=2, ncols=1, height=8)
    assert not any("prints over the panel" in p for p in draw(fig, axes))


def test_publish_shows_the_saved_file_at_its_natural_css_size(tmp_path):
    fig, ax = plots.figure("single")
    ax.plot([0, 1], [0, 1])
    image = plots.publish(fig, tmp_path, "one")
    with Image.open(tmp_path / "one.png") as saved:
        assert image.width == round(saved.size[0] / 2)
    assert image.data == (tmp_path / "one.png").read_bytes()


def test_a_saved_axis_of_large_values_is_labelled_120k_not_with_a_multiplier(tmp_path):
    fig, ax = plots.figure("single")
    ax.plot([-600000, 550000], [0, 1])
    ax.set_xlabel("eigenvalue")
    found = plots.metadata(plots.savefig(fig, tmp_path, "large"))
    labels = [t.get_text() for t in ax.xaxis.get_ticklabels() if t.get_text()]
    assert found["problems"] == [] and ax.xaxis.get_offset_text().get_text() == ""
    assert any(label.endswith("k") for label in labels) and all("e" not in label for label in labels)


def test_a_log_axis_within_a_decade_shows_no_crowded_minor_labels(tmp_path):
    import numpy as np

    from flatlib import plots

    fig, axes = plots.figure("row", ncols=3)
    for ax in axes.flat:
        ax.scatter(np.linspace(15, 70, 20), np.linspace(0, 1, 20))
        ax.set(xscale="log")
    plots.savefig(fig, tmp_path, "log")
    assert not plots.metadata(tmp_path / "log.png")["problems"]
