"""One plotting style for the whole book, and one way to save a figure beside a chapter's summary."""
from __future__ import annotations

from pathlib import Path

import matplotlib

# Chapters run headless under papermill and in CI.
if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "agg"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

# Colour per measure family, used by every chapter so a reader learns it once.
FAMILY_COLORS = {
    "sharpness": "#c44e52",
    "weakness": "#4c72b0",
    "simplicity": "#55a868",
    "bound": "#8172b2",
    "generalisation": "#333333",
}


def style() -> None:
    """Apply the book's style: seaborn's white grid, paper context, readable sizes."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.2)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "axes.spines.top": False, "axes.spines.right": False,
                         # tick labels carry their own values: no "1e-7+9.99e-1" offset over an axis
                         "axes.formatter.useoffset": False})


def savefig(fig, out_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``out_dir/name.png`` (the chapter's output folder) and return the path."""
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
