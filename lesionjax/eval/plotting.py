"""Drawing helpers shared by the report (``report``) and the comparison figures (``figures``).

Figures are drawn on ``matplotlib.figure.Figure`` objects with an explicit Agg canvas, never
through pyplot: no global backend is selected, nothing is left open in a long training process,
and matplotlib is imported only when a figure is drawn. Files are written atomically
(``lesionjax.core.atomic``), so a reader or a killed job never sees a half-written PNG.

Display orientation: slices are (X, Y) arrays in RAS voxel order (axis 0: patient left -> right,
axis 1: posterior -> anterior) and are shown with ``to_display``, i.e. anterior up and the
patient's right on the right of the screen (neurological convention, not radiological).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lesionjax.core.atomic import atomic_write_with

# Colour-blind-safe (Okabe-Ito) colours for prediction contours; ground truth is always green.
GT_COLOUR = "#00d455"
PRED_COLOURS = ("#ff3b30", "#56b4e9", "#f0e442", "#cc79a7", "#e69f00", "#ffffff")
FONT = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10}


def to_display(slice_xy: np.ndarray) -> np.ndarray:
    """(X, Y) RAS slice -> (Y, X) image for `imshow`: anterior up, patient right on the right.

    Transposing puts X along the screen's columns (left -> right) and flipping the rows puts the
    largest Y (anterior) in row 0, which `imshow` draws at the top.
    """
    return np.flipud(np.asarray(slice_xy).T)


def new_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    return atomic_write_with(
        path,
        lambda f: fig.savefig(
            f, format=fmt, dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.1
        ),
    )


def message_figure(message: str):
    fig = new_figure((6.0, 3.0))
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=16, color="0.3")
    ax.set_axis_off()
    return fig


def legend_handle(colour: str, label: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=colour, linewidth=2.0, label=label)


def check_example(i: int, example: Mapping) -> tuple[np.ndarray, np.ndarray, dict]:
    image = np.asarray(example["image"], np.float64)
    gt = np.asarray(example["gt"]).astype(bool)
    pred = example["pred"]
    preds = dict(pred) if isinstance(pred, Mapping) else {"prediction": pred}
    preds = {name: np.asarray(p).astype(bool) for name, p in preds.items()}
    if image.ndim != 2:
        raise ValueError(f"overlay example {i}: image must be (H, W), got shape {image.shape}")
    for name, mask in [("gt", gt), *preds.items()]:
        if mask.shape != image.shape:
            raise ValueError(
                f"overlay example {i}: {name} shape {mask.shape} != image shape {image.shape}"
            )
    return image, gt, preds


def draw_contour(ax, mask_display: np.ndarray, colour: str, linestyle: str = "-") -> None:
    if mask_display.any():
        ax.contour(
            mask_display.astype(np.float32),
            levels=[0.5],
            colors=[colour],
            linewidths=1.6,
            linestyles=linestyle,
        )
