"""Evaluation report: training curves, prediction overlays and a markdown summary, and the
multi-method comparison report (tables, Welch tests and the figures of ``figures``).

Drawing conventions (Agg canvas, atomic writes, display orientation) are those of ``plotting``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lesionjax.core.atomic import atomic_write_text
from lesionjax.core.errors import UserError
from lesionjax.eval.metrics import format_summary_table, overlap_metrics
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

CURVE_METRICS = ("loss", "dice", "iou", "precision", "recall", "auc", "lr")
# Panels drawn even when the log lacks them ("not logged"), so a reader sees what was not tracked.
REQUIRED_CURVES = ("loss", "dice", "auc", "precision", "recall", "lr")
PER_VOLUME_COLUMNS = (
    "dice",
    "iou",
    "precision",
    "recall",
    "lesion_f1",
    "gt_lesions",
    "pred_lesions",
    "gt_ml",
    "pred_ml",
)
SPLIT_COLOURS = {"train": "#0072b2", "val": "#d55e00", "test": "#009e73"}


class MetricsLogError(UserError, ValueError):
    """A file given as a metrics log is not one; the message names the file (and line)."""


def read_metrics_log(path: str | os.PathLike) -> list[dict]:
    """Reads a JSONL metrics log: one JSON object per line, blank lines skipped.

    Robust to what kills and resumes leave behind: a line that does not parse (cut short by a
    kill, possibly with the resumed run's first record appended to it) is skipped wherever it
    is, and when a step was logged twice (after the last checkpoint, then again after the
    resume) only its last record per split is kept, in the position of the first. A file in
    which no line is a JSON object is not a metrics log: ValueError naming it.
    """
    path = Path(path)
    # Bytes + "replace": a kill can also cut a multi-byte UTF-8 character in half.
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    by_key: dict = {}
    for lineno, line in numbered:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise MetricsLogError(f"{path}:{lineno}: expected a JSON object, got a {kind}")
        key = (record.get("split"), record["step"]) if "step" in record else ("line", lineno)
        by_key[key] = record  # a dict keeps the first position and takes the last value
    if numbered and not by_key:
        raise MetricsLogError(f"{path}: no line is a JSON object; not a metrics log")
    return list(by_key.values())


def _is_number(value) -> bool:
    # numbers.Real also covers NumPy scalars (np.float32 from an in-memory history).
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _smooth(values: np.ndarray) -> np.ndarray | None:
    """Debiased exponential moving average over ~5% of the points; None when too short to help."""
    span = len(values) // 20
    if span < 2:
        return None
    beta = 1.0 - 2.0 / (span + 1)
    out = np.empty_like(values, dtype=np.float64)
    acc = 0.0
    for i, v in enumerate(values):
        acc = beta * acc + (1.0 - beta) * v
        out[i] = acc / (1.0 - beta ** (i + 1))  # debias: early points are not pulled to 0
    return out


def plot_training_curves(
    history: Sequence[Mapping],
    path: str | os.PathLike,
    *,
    metrics: Sequence[str] = CURVE_METRICS,
    required: Sequence[str] = REQUIRED_CURVES,
) -> Path:
    """Draws one subplot per metric in ``metrics`` found in ``history``, train and val as lines.

    Args:
      history: records such as ``{"step": 10, "epoch": 0.5, "split": "train", "loss": 0.4}``
        (a record without "split" counts as train). x is "epoch" when every record has one,
        else "step", else the record's position.
      path: the PNG to write (atomically); parent folders are created.
      metrics: which keys to plot, in this order.
      required: keys of ``metrics`` that get a panel even when absent from the history; it says
        "not logged".

    Returns:
      ``Path(path)``. An empty history writes a figure saying "no data".
    """
    history = list(history)
    logged = {m for m in metrics if any(_is_number(r.get(m)) for r in history)}
    if not logged:
        return save_figure(message_figure("no data"), path)
    present = [m for m in metrics if m in logged or m in required]
    if all(_is_number(r.get("epoch")) for r in history):
        x_key = "epoch"
    elif all(_is_number(r.get("step")) for r in history):
        x_key = "step"
    else:
        x_key = None

    import matplotlib

    with matplotlib.rc_context(FONT):
        ncols = min(3, len(present))
        nrows = math.ceil(len(present) / ncols)
        fig = new_figure((4.6 * ncols, 3.4 * nrows))
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        splits = list(dict.fromkeys(str(r.get("split", "train")) for r in history))
        for ax, metric in zip(axes, present, strict=False):
            if metric not in logged:
                ax.text(
                    0.5,
                    0.5,
                    "not logged",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    fontsize=13,
                    color="0.45",
                )
                ax.set_title(metric)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            for j, split in enumerate(splits):
                points = [
                    (r[x_key] if x_key else i, r[metric])
                    for i, r in enumerate(history)
                    if str(r.get("split", "train")) == split and _is_number(r.get(metric))
                ]
                if not points:
                    continue
                x, y = np.asarray(points, np.float64).T
                colour = SPLIT_COLOURS.get(split, f"C{j + 3}")
                smooth = _smooth(y) if split == "train" and metric != "lr" else None
                if smooth is not None:
                    ax.plot(x, y, color=colour, alpha=0.25, linewidth=1.0)
                    ax.plot(x, smooth, color=colour, linewidth=1.8, label=f"{split} (smoothed)")
                else:
                    # Sparse series (validation) get markers so single evaluations stay visible.
                    ax.plot(
                        x,
                        y,
                        color=colour,
                        linewidth=1.6,
                        marker="o" if len(x) < 50 else None,
                        markersize=4,
                        label=split,
                    )
            if metric == "lr" and ax.lines:
                ys = np.concatenate([line.get_ydata() for line in ax.lines])
                if ys.min() > 0 and ys.max() / ys.min() > 10:
                    ax.set_yscale("log")
            ax.set_title(metric)
            ax.set_xlabel(x_key or "record")
            ax.set_ylabel(metric)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best")
        for ax in axes[len(present) :]:
            ax.set_axis_off()
        return save_figure(fig, path)


def plot_overlays(
    examples: Sequence[Mapping],
    path: str | os.PathLike,
    *,
    columns: Sequence[str] = ("image", "ground truth", "prediction"),
) -> Path:
    """Draws one row per example: the image, ground truth over it, prediction(s) over it.

    Args:
      examples: dicts ``{"image": (X, Y) float in [0, 1], "gt": (X, Y) bool, "pred": (X, Y) bool
        or {model name: (X, Y) bool}, "title": str}`` in RAS voxel order (shown via `to_display`).
      path: the PNG to write (atomically).
      columns: the three column titles. The prediction column draws each model's contour in its
        own colour (with the ground truth contour dashed for reference) and its title gives each
        model's Dice on this slice (1.0 when both masks are empty, see `metrics`).

    Returns:
      ``Path(path)``. No examples write a figure saying "no examples".
    """
    if len(columns) != 3:
        raise ValueError(f"columns must name 3 panels (image, ground truth, prediction): {columns}")
    checked = [check_example(i, ex) for i, ex in enumerate(examples)]
    if not checked:
        return save_figure(message_figure("no examples"), path)
    models = list(dict.fromkeys(name for _, _, preds in checked for name in preds))
    colours = {name: PRED_COLOURS[k % len(PRED_COLOURS)] for k, name in enumerate(models)}

    import matplotlib

    with matplotlib.rc_context(FONT):
        rows = len(checked)
        fig = new_figure((3 * 3.3, rows * 3.6 + 0.8))
        axes = fig.subplots(rows, 3, squeeze=False)
        for row, ((image, gt, preds), example) in enumerate(zip(checked, examples, strict=True)):
            shown = to_display(image)
            gt_shown = to_display(gt)
            for ax in axes[row]:
                # Default interpolation: antialiased when a 512x512 slice is shrunk to a panel.
                ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[row, 0].set_title(columns[0])
            axes[row, 0].set_ylabel(str(example.get("title", f"example {row}")))
            # Filled ground truth in the middle panel shows its extent, contour shows its edge.
            axes[row, 1].imshow(
                np.ma.masked_where(~gt_shown, gt_shown),
                cmap="Greens",
                vmin=0,
                vmax=1.2,
                alpha=0.45,
                interpolation="nearest",
            )
            draw_contour(axes[row, 1], gt_shown, GT_COLOUR)
            axes[row, 1].set_title(f"{columns[1]} ({int(gt.sum())} px)")
            draw_contour(axes[row, 2], gt_shown, GT_COLOUR, linestyle="--")
            scores = []
            for name, mask in preds.items():
                draw_contour(axes[row, 2], to_display(mask), colours[name])
                dice = overlap_metrics(mask, gt)["dice"]
                scores.append(f"Dice {dice:.3f}" if len(models) == 1 else f"{name}: {dice:.3f}")
            joined = ", ".join(scores)
            # Long model names: one per line rather than a title wider than its panel.
            joined = joined if len(joined) <= 40 else "\n".join(scores)
            axes[row, 2].set_title(f"{columns[2]}\n{joined}", fontsize=11)
        # Orientation letters once, on the first image; they hold for RAS input only.
        ax0 = axes[0, 0]
        for x, y, letter in [(0.5, 0.97, "A"), (0.97, 0.5, "R"), (0.03, 0.5, "L")]:
            ax0.text(
                x,
                y,
                letter,
                transform=ax0.transAxes,
                color="yellow",
                fontsize=10,
                ha="center",
                va="center",
                fontweight="bold",
            )
        handles = [legend_handle(GT_COLOUR, columns[1])]
        handles += [legend_handle(colours[m], m) for m in models]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
        return save_figure(fig, path)


def _natural_key(case_id) -> list:
    # "case10" after "case9": digit runs compare as numbers (re.split keeps str/int alternating).
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(case_id))]


def _format_value(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}" if key.endswith("_ml") else f"{value:.3f}"
    return str(value)


def _per_volume_table(per_volume: Sequence[Mapping]) -> str:
    for i, volume in enumerate(per_volume):
        if "case_id" not in volume:
            raise ValueError(f"per_volume[{i}] has no 'case_id' (keys: {sorted(volume)})")
    columns = [c for c in PER_VOLUME_COLUMNS if any(c in v for v in per_volume)]
    lines = [
        "| case | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for volume in sorted(per_volume, key=lambda v: _natural_key(v["case_id"])):
        case = str(volume["case_id"]).replace("|", "\\|")
        cells = [_format_value(c, volume.get(c)) for c in columns]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | os.PathLike,
    *,
    summary: Mapping,
    per_volume: Sequence[Mapping],
    history: Sequence[Mapping],
    overlay_examples: Sequence[Mapping],
    title: str = "lesionjax evaluation",
    figures: Sequence[tuple[str, str | os.PathLike, str]] = (),
    draw_figures: bool = True,
) -> Path:
    """Writes ``out_dir/report.md`` with ``training_curves.png`` and ``overlays.png`` beside it
    (neither with ``draw_figures=False``: the report says where the numbers are instead).

    Args:
      out_dir: folder for the three files (created).
      summary: a `metrics.summarize` result.
      per_volume: per-case dicts with a "case_id" key and `metrics.volume_metrics` keys.
      history: training records for `plot_training_curves`.
      overlay_examples: examples for `plot_overlays`.
      title: the report's heading.
      figures: more figures already written into ``out_dir``, as (heading, file, caption); each
        gets its own section after the overlays.

    Returns:
      The path of report.md.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if draw_figures:
        curves = plot_training_curves(history, out_dir / "training_curves.png")
        overlays = plot_overlays(overlay_examples, out_dir / "overlays.png")
        figure_text = [
            "## Training curves\n",
            f"![training curves]({curves.name})\n",
            "## Prediction overlays\n",
            "Anterior up, patient right on the right; green: ground truth.\n",
            f"![prediction overlays]({overlays.name})\n",
            *_figure_sections(figures),
        ]
    else:
        figure_text = [
            "Figures were not drawn (`eval.figures = False`); the training log is "
            "`metrics.jsonl` in the run folder.\n"
        ]
    text = "\n".join(
        [
            f"# {title}\n",
            "## Summary\n",
            "Mean ± population standard deviation (ddof=0) of per-volume metrics. Lesion volumes "
            "have a non-empty ground truth. `*_eps1`: smoothed with epsilon = 1 (label-efficient "
            "ICH convention); plain metrics score an empty prediction of an empty ground truth as "
            "1.0. (n=k) in a cell: NaN values were left out.\n",
            format_summary_table(summary),
            "## Per-volume metrics\n",
            _per_volume_table(per_volume),
            *figure_text,
        ]
    )
    return atomic_write_text(out_dir / "report.md", text)


def _figure_sections(figures: Sequence[tuple[str, str | os.PathLike, str]]) -> list[str]:
    out = []
    for heading, file, caption in figures:
        out.append(f"## {heading}\n")
        if caption:
            out.append(caption.rstrip() + "\n")
        out.append(f"![{heading}]({Path(file).name})\n")
    return out


def write_comparison(
    out_dir: str | os.PathLike,
    methods: Mapping[str, Sequence[Mapping]],
    *,
    metric: str = "dice",
    overlay_examples: Sequence[Mapping] | None = None,
    sources: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    title: str = "lesionjax comparison",
) -> dict[str, Path]:
    """Writes the multi-method comparison of per-volume results into ``out_dir``.

    Files: ``table.md`` (mean ± std of every metric per method, over all volumes and over lesion
    volumes), ``table_all.csv``, ``table_lesion.csv``, ``welch_tests.md`` and
    ``welch_tests.csv`` (Welch's two-sided t-test for every pair of methods, metric and volume
    group), ``boxplots.png`` (``metric`` per volume group and subtype), ``p_values.png`` (the
    ``metric``'s p-values, all and lesion volumes), ``overlays.png`` (when ``overlay_examples``
    is given) and ``report.md`` holding all of them.

    Args:
      out_dir: the output folder (created).
      methods: {method name: per-volume dicts (``eval/per_volume.json``)}, at least two, over the
        same case ids.
      metric: the metric of the box plots and the heatmap; must be a numeric per-volume key.
      overlay_examples: examples for `figures.plot_model_overlays`, or None to leave them out.
      sources: {method name: where its results came from}, listed in the report.
      notes: extra lines for the report (e.g. why overlays are missing).
      title: the report's heading.

    Returns:
      {file name without extension: path} of every file written.

    Raises:
      ValueError: fewer than two methods, different volume sets, or an unknown ``metric``.
    """
    from lesionjax.eval import figures, stats

    if len(methods) < 2:
        raise ValueError(f"a comparison needs at least two methods, got {len(methods)}")
    stats.check_same_volumes(methods, sources)
    keys = stats.metric_keys(*methods.values())
    if metric not in keys:
        raise ValueError(f"metric {metric!r} is not in the per-volume results (have: {keys})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    table_md = []
    for group in stats.GROUPS:
        rows = stats.comparison_table(methods, keys, group=group, counts=True)
        written[f"table_{group}"] = atomic_write_text(
            out_dir / f"table_{group}.csv", stats.rows_csv(rows)
        )
        label = "All volumes" if group == "all" else "Lesion volumes (non-empty ground truth)"
        table_md += [f"### {label}\n", stats.table_markdown(rows, keys)]
    table_text = "\n".join(table_md)
    written["table"] = atomic_write_text(out_dir / "table.md", table_text)

    tests = []
    for group in stats.GROUPS:
        grouped = {name: stats.group_volumes(pv, group) for name, pv in methods.items()}
        tests += [{"group": group, **row} for row in stats.welch_tests(grouped, keys)]
    written["welch_tests"] = atomic_write_text(out_dir / "welch_tests.csv", stats.rows_csv(tests))
    welch_text = stats.welch_markdown(tests)
    atomic_write_text(out_dir / "welch_tests.md", welch_text)

    names = list(methods)
    written["boxplots"] = figures.plot_metric_boxplots(
        methods, out_dir / "boxplots.png", metric=metric
    )
    panels = {}
    for group in stats.GROUPS:
        rows = [r for r in tests if r["group"] == group]
        n = len(stats.group_volumes(next(iter(methods.values())), group))
        label = "all volumes" if group == "all" else "lesion volumes"
        panels[f"{label} (n={n})"] = stats.p_value_matrix(rows, metric, names)
    written["p_values"] = figures.plot_p_value_heatmap(
        panels, names, out_dir / "p_values.png", metric=metric
    )
    sections = []
    if overlay_examples is not None:
        written["overlays"] = figures.plot_model_overlays(
            overlay_examples, out_dir / "overlays.png"
        )
        sections.append(
            (
                "Prediction overlays",
                written["overlays"],
                "Anterior up, patient right on the right; green: ground truth (dashed over "
                "each model's prediction).",
            )
        )

    n_volumes = len(next(iter(methods.values())))
    source_lines = [
        f"- **{name}**: {sources[name] if sources and name in sources else '(given)'}"
        for name in names
    ]
    text = "\n".join(
        [
            f"# {title}\n",
            f"{len(names)} methods on the same {n_volumes} volumes.\n",
            *source_lines,
            "",
            *[f"{line}\n" for line in notes],
            "## Summary tables\n",
            "Mean ± population standard deviation (ddof=0) of per-volume metrics; (n=k): NaN "
            "values (undefined on some volumes) were left out. Also in `table_all.csv` and "
            "`table_lesion.csv`.\n",
            table_text,
            "## Per-volume distributions\n",
            f"![{metric} box plots]({written['boxplots'].name})\n",
            "## Welch t-tests\n",
            "Two-sided, unequal variances, every pair of methods (volumes are not treated as "
            "matched); bold: p < 0.05, not corrected for multiple comparisons. Also in "
            "`welch_tests.csv`.\n",
            f"![p-values]({written['p_values'].name})\n",
            welch_text,
            *_figure_sections(sections),
        ]
    )
    written["report"] = atomic_write_text(out_dir / "report.md", text)
    return written
