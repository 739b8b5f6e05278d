"""Comparison figures: side-by-side overlays of several models, per-subtype box plots, p-value
heatmaps and t-SNE plots of bottleneck features.

Same conventions as the report (``plotting``): `matplotlib.figure.Figure` on an Agg canvas (no
pyplot, no global state), its FONT, atomic PNG writes through `plotting.save_figure`, and slices
shown with `plotting.to_display` (anterior up, patient right on the right).

Inputs are plain data (per-volume dicts, arrays), so every figure can be drawn from saved results
without JAX.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lesionjax.core.labels import SUBTYPE_ABBREV, SUBTYPES
from lesionjax.eval.metrics import overlap_metrics
from lesionjax.eval.plotting import (
    FONT,
    GT_COLOUR,
    PRED_COLOURS,
    check_example,
    draw_contour,
    legend_handle,
    message_figure,
    new_figure,
    save_figure,
    to_display,
)
from lesionjax.eval.stats import format_p

# Okabe-Ito, readable on white (boxes, points); PRED_COLOURS are for contours on grey images.
METHOD_COLOURS = (
    "#0072b2",
    "#d55e00",
    "#009e73",
    "#cc79a7",
    "#e69f00",
    "#56b4e9",
    "#000000",
    "#8c564b",
    "#bcbd22",
    "#7f7f7f",
    "#17becf",
    "#f0e442",
)  # Okabe-Ito, then tab10: twelve methods before a colour repeats
SUBTYPE_COLOURS = dict(
    zip(SUBTYPES, ("#e69f00", "#d55e00", "#0072b2", "#009e73", "#cc79a7"), strict=True)
)
NO_LESION_COLOUR = "#bdbdbd"
# Metrics bounded in [0, 1]: box plots get a fixed y range so figures of runs compare at a glance.
UNIT_METRICS = ("dice", "iou", "precision", "recall", "nsd", "auc")


def _abbrev(subtype: str) -> str:
    return dict(zip(SUBTYPES, SUBTYPE_ABBREV, strict=True)).get(subtype, subtype)


def _method_colour(k: int) -> str:
    return METHOD_COLOURS[k % len(METHOD_COLOURS)]


# ------------------------------------------------------------------------------ overlays


def _fill(ax, mask_display: np.ndarray, colour: str, alpha: float = 0.35) -> None:
    from matplotlib.colors import ListedColormap

    if mask_display.any():
        ax.imshow(
            np.ma.masked_where(~mask_display, mask_display.astype(np.float32)),
            cmap=ListedColormap([colour]),
            vmin=0,
            vmax=1,
            alpha=alpha,
            interpolation="nearest",
        )


def plot_model_overlays(
    examples: Sequence[Mapping], path: str | os.PathLike, *, gt_label: str = "ground truth"
) -> Path:
    """One row per case, one column per model: image | ground truth | model 1 | model 2 ...

    Args:
      examples: dicts ``{"image": (X, Y) float in [0, 1], "gt": (X, Y) bool, "pred": {model
        name: (X, Y) bool}, "title": str}`` in RAS voxel order. Every example should name the
        same models; a model missing from a row leaves its panel with the image only.
      path: the PNG to write (atomically).
      gt_label: the ground-truth column's title and legend entry.

    Each model's panel fills its prediction in the model's colour, outlines it, and dashes the
    ground-truth outline in green for reference; the title gives the model's Dice on the slice.

    Returns:
      ``Path(path)``; no examples write a figure saying "no examples".
    """
    checked = [check_example(i, ex) for i, ex in enumerate(examples)]
    if not checked:
        return save_figure(message_figure("no examples"), path)
    models = list(dict.fromkeys(name for _, _, preds in checked for name in preds))
    colours = {name: PRED_COLOURS[k % len(PRED_COLOURS)] for k, name in enumerate(models)}

    import matplotlib

    with matplotlib.rc_context(FONT):
        rows, cols = len(checked), 2 + len(models)
        fig = new_figure((2.7 * cols, 2.95 * rows + 0.7))
        axes = fig.subplots(rows, cols, squeeze=False)
        for row, ((image, gt, preds), example) in enumerate(zip(checked, examples, strict=True)):
            shown, gt_shown = to_display(image), to_display(gt)
            for ax in axes[row]:
                ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[row, 0].set_ylabel(str(example.get("title", f"example {row}")))
            axes[row, 0].set_title("image")
            _fill(axes[row, 1], gt_shown, GT_COLOUR, alpha=0.45)
            draw_contour(axes[row, 1], gt_shown, GT_COLOUR)
            axes[row, 1].set_title(f"{gt_label}\n{int(gt.sum())} px", fontsize=10)
            for col, name in enumerate(models, start=2):
                ax = axes[row, col]
                draw_contour(ax, gt_shown, GT_COLOUR, linestyle="--")
                label = textwrap.shorten(name, 28, placeholder="…")
                if name not in preds:
                    ax.set_title(f"{label}\n(no prediction)", fontsize=10)
                    continue
                mask = to_display(preds[name])
                _fill(ax, mask, colours[name])
                draw_contour(ax, mask, colours[name])
                dice = overlap_metrics(preds[name], gt)["dice"]
                ax.set_title(f"{label}\nDice {dice:.3f}", fontsize=10)
        handles = [legend_handle(GT_COLOUR, gt_label)]
        handles += [legend_handle(colours[m], m) for m in models]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(handles), 4),
            frameon=False,
        )
        fig.get_layout_engine().set(h_pad=0.04, w_pad=0.02)
        return save_figure(fig, path)


def overlay_slices(mask: np.ndarray, n: int = 4) -> list[int]:
    """Up to ``n`` axial slices of a (X, Y, Z) prediction to show: the slice where the largest
    lesion is largest first, then the slices holding the most predicted voxels; evenly spaced
    slices when nothing is predicted."""
    from lesionjax.eval.lesions import label_lesions

    mask = np.asarray(mask, bool)
    z = mask.shape[2]
    labels, n_lesions = label_lesions(mask)
    if n_lesions == 0:
        return sorted({int(round(v)) for v in np.linspace(0, z - 1, min(n, z) + 2)[1:-1]})
    largest = int(np.argmax(np.bincount(labels.ravel(), minlength=n_lesions + 1)[1:])) + 1
    first = int(np.argmax((labels == largest).sum(axis=(0, 1))))
    per_slice = mask.sum(axis=(0, 1))
    order = [int(k) for k in np.argsort(-per_slice, kind="stable") if per_slice[k] > 0]
    return [first] + [k for k in order if k != first][: n - 1]


def plot_prediction_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str = "",
    n_slices: int = 4,
) -> Path:
    """A few axial slices of a prediction: the image with the predicted outline.

    Args:
      image: (X, Y, Z) in [0, 1] (RAS voxel order). mask: (X, Y, Z) bool, same shape.
      path: the PNG to write (atomically). title: the figure's title (e.g. the case).
      n_slices: how many slices (`overlay_slices` picks them, the largest lesion's first).
    """
    image = np.asarray(image, np.float64)
    mask = np.asarray(mask, bool)
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and mask {mask.shape}: expected one (X, Y, Z)")
    slices = overlay_slices(mask, n_slices)
    colour = PRED_COLOURS[0]

    import matplotlib

    with matplotlib.rc_context(FONT):
        fig = new_figure((2.8 * len(slices), 3.2))
        axes = fig.subplots(1, len(slices), squeeze=False)[0]
        for ax, k in zip(axes, slices, strict=True):
            shown = to_display(mask[:, :, k])
            ax.imshow(to_display(image[:, :, k]), cmap="gray", vmin=0.0, vmax=1.0)
            draw_contour(ax, shown, colour)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"slice {k}: {int(mask[:, :, k].sum())} px", fontsize=10)
        if title:
            fig.suptitle(title)
        return save_figure(fig, path)


# ------------------------------------------------------------------------------ box plots


def volume_subtypes(volume: Mapping) -> set[str]:
    """The subtype names of a per-volume dict's ``"subtypes"`` entry (";"-joined or a list)."""
    value = volume.get("subtypes") or ()
    if isinstance(value, str):
        value = value.split(";")
    return {str(s).strip() for s in value if str(s).strip()}


def volume_groups(
    methods: Mapping[str, Sequence[Mapping]], subtypes: Sequence[str] = SUBTYPES
) -> list[tuple[str, set[str]]]:
    """(group label, case ids) for the box plots: all volumes, lesion volumes, then one group per
    subtype present in any volume (a volume belongs to every subtype it contains).

    Case ids come from all methods together, so a group holds the same volumes for each method.
    Subtypes not in ``subtypes`` follow in alphabetical order.
    """
    all_ids: set[str] = set()
    lesion_ids: set[str] = set()
    by_subtype: dict[str, set[str]] = {}
    for per_volume in methods.values():
        for v in per_volume:
            case = str(v["case_id"])
            all_ids.add(case)
            if v.get("gt_voxels", 0) > 0:
                lesion_ids.add(case)
            for s in volume_subtypes(v):
                by_subtype.setdefault(s, set()).add(case)
    order = [s for s in subtypes if s in by_subtype]
    order += sorted(set(by_subtype) - set(order))
    groups = [("all volumes", all_ids), ("lesion volumes", lesion_ids)]
    return groups + [(s, by_subtype[s]) for s in order]


def _finite(values) -> np.ndarray:
    out = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return np.asarray(out, np.float64)


def plot_metric_boxplots(
    methods: Mapping[str, Sequence[Mapping]],
    path: str | os.PathLike,
    *,
    metric: str = "dice",
    subtypes: Sequence[str] = SUBTYPES,
    title: str | None = None,
) -> Path:
    """Box plots of a per-volume metric: one box per method in each volume group (all volumes,
    lesion volumes, each ICH subtype present), with the volumes drawn as points and the number
    of values (n=...) under each box.

    Args:
      methods: {method name: per-volume dicts with "case_id", ``metric``, "gt_voxels" and
        optionally "subtypes" (see `volume_subtypes`)}.
      path: the PNG to write (atomically).
      metric: the per-volume key to plot; NaN values are left out (and not counted).
      subtypes: the subtype order on the x axis (default: `labels.SUBTYPES`, shown abbreviated).
      title: the axes title (default: "Per-volume <metric> by volume group").

    Returns:
      ``Path(path)``; no volumes write a figure saying "no volumes".
    """
    groups = volume_groups(methods, subtypes)
    if not groups[0][1]:
        return save_figure(message_figure("no volumes"), path)
    names = list(methods)
    n_methods = len(names)

    import matplotlib
    from matplotlib.patches import Patch

    rng = np.random.default_rng(0)  # jitter of the points only
    with matplotlib.rc_context(FONT):
        n_boxes = len(groups) * n_methods
        fig = new_figure((max(6.5, 0.62 * n_boxes + 2.8), 4.6))
        ax = fig.add_subplot()
        positions, labels, centres = [], [], []
        for g, (_, ids) in enumerate(groups):
            base = g * (n_methods + 1)
            centres.append(base + (n_methods - 1) / 2)
            if g:
                ax.axvline(base - 1, color="0.85", linewidth=1.0, zorder=0)
            for k, name in enumerate(names):
                pos = base + k
                values = _finite(v.get(metric) for v in methods[name] if str(v["case_id"]) in ids)
                positions.append(pos)
                labels.append(f"n={len(values)}")
                if not len(values):
                    continue
                colour = _method_colour(k)
                box = ax.boxplot(
                    [values],
                    positions=[pos],
                    widths=0.7,
                    patch_artist=True,
                    showfliers=False,  # every volume is drawn as a point below
                    medianprops={"color": "black", "linewidth": 1.6},
                )
                for patch in box["boxes"]:
                    patch.set_facecolor(colour)
                    patch.set_alpha(0.45)
                    patch.set_edgecolor(colour)
                jitter = rng.uniform(-0.18, 0.18, len(values))
                ax.scatter(
                    pos + jitter, values, s=12, color=colour, edgecolors="none", alpha=0.8, zorder=3
                )
        ax.set_xticks(positions, labels=labels, fontsize=8)
        ax.tick_params(axis="x", length=0)
        ax.set_xlim(-0.8, positions[-1] + 0.8)
        secondary = ax.secondary_xaxis("bottom")
        group_labels = [_abbrev(label) for label, _ in groups]
        secondary.set_xticks(centres, labels=group_labels)
        secondary.tick_params(axis="x", length=0, pad=16)
        secondary.spines["bottom"].set_visible(False)
        shown_subtypes = [label for label, _ in groups[2:] if label in SUBTYPES]
        xlabel = "volume group"
        if shown_subtypes:
            xlabel += " (" + ", ".join(f"{_abbrev(s)}: {s}" for s in shown_subtypes) + ")"
        secondary.set_xlabel("\n".join(textwrap.wrap(xlabel, 110)))
        if metric in UNIT_METRICS or metric.removesuffix("_eps1") in UNIT_METRICS:
            ax.set_ylim(-0.04, 1.04)
        ax.set_ylabel(f"per-volume {metric}")
        ax.set_title(title or f"Per-volume {metric} by volume group")
        ax.grid(True, axis="y", alpha=0.3)
        if n_methods > 1 or names[0] not in ("", "prediction"):
            handles = [
                Patch(facecolor=_method_colour(k), alpha=0.6, label=name)
                for k, name in enumerate(names)
            ]
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return save_figure(fig, path)


# ------------------------------------------------------------------------------ p-values


def plot_p_value_heatmap(
    p_values: np.ndarray | Mapping[str, np.ndarray],
    names: Sequence[str],
    path: str | os.PathLike,
    *,
    metric: str = "dice",
    alpha: float = 0.05,
) -> Path:
    """Methods x methods heatmap(s) of p-values on a log colour scale, each cell annotated.

    Args:
      p_values: one (M, M) matrix from `stats.p_value_matrix`, or {panel title: matrix} for
        side-by-side panels (e.g. all volumes and lesion volumes) sharing one colour bar.
      names: the M method names, in matrix order.
      path: the PNG to write (atomically).
      metric: named in the title.
      alpha: significance level: marked on the colour bar, and cells below it are bold.

    NaN cells (the diagonal, or an undefined test) are grey; p = 0 (two constant, different
    samples) is drawn at the bottom of the scale.

    Returns:
      ``Path(path)``.
    """
    panels = dict(p_values) if isinstance(p_values, Mapping) else {"": p_values}
    n = len(names)
    for title, matrix in panels.items():
        if np.shape(matrix) != (n, n):
            raise ValueError(
                f"p-value matrix {title!r}: shape {np.shape(matrix)} != ({n}, {n}) for {n} names"
            )
    positive = [
        float(p)
        for m in panels.values()
        for p in np.asarray(m, np.float64).ravel()
        if math.isfinite(p) and p > 0
    ]
    vmin = min([1e-4, *positive])

    import matplotlib
    from matplotlib.colors import LogNorm

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.88")
    norm = LogNorm(vmin=vmin, vmax=1.0)
    with matplotlib.rc_context(FONT):
        side = max(3.6, 0.95 * n + 1.6)
        fig = new_figure((side * len(panels) + 1.3, side + 0.5))
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        image = None
        for ax, (title, matrix) in zip(axes, panels.items(), strict=True):
            p = np.asarray(matrix, np.float64)
            shown = np.where(p == 0, vmin, p)
            image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, norm=norm)
            for i in range(n):
                for j in range(n):
                    value = p[i, j]
                    if i == j:
                        text, colour, weight = "–", "0.4", "normal"
                    elif not math.isfinite(value):
                        text, colour, weight = "n/a", "0.3", "normal"
                    else:
                        text = format_p(value)
                        dark = norm(max(value, vmin)) < 0.6
                        colour = "white" if dark else "black"
                        weight = "bold" if value < alpha else "normal"
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        color=colour,
                        fontweight=weight,
                        fontsize=10 if n <= 5 else 8,
                    )
            short = [textwrap.shorten(m, 18, placeholder="…") for m in names]
            ax.set_xticks(range(n), labels=short, rotation=35, ha="right", rotation_mode="anchor")
            ax.set_yticks(range(n), labels=short)
            ax.set_title(title)
        colourbar = fig.colorbar(image, ax=list(axes), shrink=0.85)
        colourbar.set_label(f"p-value, log scale (red line: {alpha:g})")
        colourbar.ax.axhline(alpha, color="red", linewidth=2.0)
        fig.suptitle(f"Welch t-tests between methods: {metric} (bold: p < {alpha:g})")
        return save_figure(fig, path)


# ------------------------------------------------------------------------------ t-SNE


def tsne_embedding(features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE of (N, D) features: z-scored per feature, PCA to 50 dims first when D > 50.

    Meant for hundreds of points (it runs on one thread). The perplexity is capped at
    (N - 1) / 3 (the usual 3 x perplexity < N rule; scikit-learn requires perplexity < N).
    Deterministic for a given ``seed``. Returns (N, 2) float.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"t-SNE needs (N >= 4, D) features, got shape {x.shape}")
    std = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    if x.shape[1] > 50:
        x = PCA(n_components=min(50, len(x)), random_state=seed).fit_transform(x)
    perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
    from threadpoolctl import threadpool_limits

    # One OpenMP thread: for a few hundred points Barnes-Hut's threads only spin against each
    # other and whatever else runs (measured on 2 busy cores: 60 points 25 s -> 0.3 s).
    with threadpool_limits(limits=1):
        return tsne.fit_transform(x)


def _subtype_category(lesion: bool, flags: np.ndarray, names: Sequence[str]) -> str:
    if not lesion:
        return "no lesion"
    present = [names[k] for k in np.flatnonzero(flags)]
    if not present:
        return "lesion, no subtype label"
    return present[0] if len(present) == 1 else "several subtypes"


def plot_tsne(
    features: np.ndarray,
    lesion: np.ndarray,
    path: str | os.PathLike,
    *,
    subtype_labels: np.ndarray | None = None,
    subtype_names: Sequence[str] = SUBTYPES,
    seed: int = 0,
    title: str = "t-SNE of bottleneck features",
) -> Path:
    """Two t-SNE panels of per-slice features: coloured by lesion presence, and by subtype.

    Args:
      features: (N, D) per-slice features (e.g. global-average-pooled bottleneck activations).
      lesion: (N,) bool, the slice has ground-truth lesion.
      path: the PNG to write (atomically).
      subtype_labels: (N, S) 0/1 per-slice subtype flags (columns in ``subtype_names`` order)
        or None; a slice with several subtypes is drawn as "several subtypes".
      subtype_names: the S subtype names.
      seed: t-SNE seed.
      title: the figure title.

    Returns:
      ``Path(path)``; fewer than 4 slices write a figure saying so.
    """
    features = np.asarray(features)
    lesion = np.asarray(lesion).astype(bool)
    if len(lesion) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(lesion)} lesion flags")
    if subtype_labels is not None:
        subtype_labels = np.asarray(subtype_labels).astype(bool)
        if subtype_labels.shape != (len(features), len(subtype_names)):
            raise ValueError(
                f"subtype labels shape {subtype_labels.shape} != "
                f"({len(features)}, {len(subtype_names)})"
            )
    if len(features) < 4:
        return save_figure(message_figure(f"too few slices for t-SNE ({len(features)})"), path)
    xy = tsne_embedding(features, seed=seed)
    flags = (
        subtype_labels
        if subtype_labels is not None
        else np.zeros((len(features), len(subtype_names)), bool)
    )
    categories = np.asarray(
        [_subtype_category(les, f, subtype_names) for les, f in zip(lesion, flags, strict=True)]
    )

    import matplotlib

    def scatter(ax, mask, colour, label):
        if mask.any():
            ax.scatter(
                xy[mask, 0],
                xy[mask, 1],
                s=22,
                color=colour,
                alpha=0.8,
                edgecolors="none",
                label=f"{label} (n={int(mask.sum())})",
            )

    with matplotlib.rc_context(FONT):
        fig = new_figure((11.5, 4.8))
        left, right = fig.subplots(1, 2)
        scatter(left, ~lesion, NO_LESION_COLOUR, "no lesion")
        scatter(left, lesion, "#d55e00", "lesion")
        left.set_title("by lesion presence")
        scatter(right, categories == "no lesion", NO_LESION_COLOUR, "no lesion")
        for name in subtype_names:
            colour = SUBTYPE_COLOURS.get(name, "C0")
            label = f"{_abbrev(name)} ({name})" if name in SUBTYPES else name
            scatter(right, categories == name, colour, label)
        scatter(right, categories == "several subtypes", "#000000", "several subtypes")
        scatter(right, categories == "lesion, no subtype label", "#8c564b", "lesion, no subtype")
        unlabelled = subtype_labels is None or not subtype_labels.any()
        right.set_title(
            "by ICH subtype" + ("\n(no subtype labels in the data)" if unlabelled else "")
        )
        for ax in (left, right):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
        fig.suptitle(f"{title} ({len(features)} slices)")
        return save_figure(fig, path)
