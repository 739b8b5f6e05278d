"""The label-efficient paper's table and figures from per-volume results of several methods.

- Table 3: mean ± std of volume Dice, precision and recall with epsilon 1 (``*_eps1``), over
  all volumes and over ICH volumes, one row per method (with its supervision);
- Figure 3: per-volume Dice box plots by ICH subtype, methods grouped by supervision;
- Figure 4: Welch t-test p-value heatmaps (Dice, precision, recall; all volumes);
- Figure 5: t-SNE of each pretext model's bottleneck features on a validation pool.

Every number comes from the per-volume dicts given (``eval/per_volume.json`` of each run), so
the table is exactly the mean over each method's per-volume files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lesionjax.core.atomic import atomic_write_text
from lesionjax.eval import stats

TABLE3_METRICS = ("dice_eps1", "precision_eps1", "recall_eps1")
_LABELS = {"dice_eps1": "Dice", "precision_eps1": "precision", "recall_eps1": "recall"}


def table3_rows(
    methods: Mapping[str, Sequence[Mapping]], supervision: Mapping[str, str]
) -> list[dict]:
    """One row per method: {"method", "supervision", "n_all", "n_ich", "<metric>_<group>_mean",
    "<metric>_<group>_std"} for group "all" and "ich" (population std, as the other tables)."""
    rows = []
    for name, per_volume in methods.items():
        row = {"method": name, "supervision": supervision.get(name, "")}
        for group, key in (("all", "all"), ("lesion", "ich")):
            summary = stats.comparison_table({name: per_volume}, TABLE3_METRICS, group=group)[0]
            row[f"n_{key}"] = summary["n"]
            for m in TABLE3_METRICS:
                row[f"{m}_{key}_mean"] = summary[f"{m}_mean"]
                row[f"{m}_{key}_std"] = summary[f"{m}_std"]
        rows.append(row)
    return rows


def _cell(row: Mapping, metric: str, group: str) -> str:
    mean, std = row[f"{metric}_{group}_mean"], row[f"{metric}_{group}_std"]
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def table3_markdown(rows: Sequence[Mapping]) -> str:
    head = ["method", "supervision"]
    head += [f"{_LABELS[m]} (all, %)" for m in TABLE3_METRICS]
    head += [f"{_LABELS[m]} (ICH, %)" for m in TABLE3_METRICS]
    n_all = rows[0]["n_all"] if rows else 0
    n_ich = rows[0]["n_ich"] if rows else 0
    lines = [
        f"Mean ± std over {n_all} volumes (all) and the {n_ich} with ICH; epsilon 1.\n",
        "| " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * (2 * len(TABLE3_METRICS)),
    ]
    for r in rows:
        cells = [_cell(r, m, "all") for m in TABLE3_METRICS]
        cells += [_cell(r, m, "ich") for m in TABLE3_METRICS]
        lines.append(f"| {r['method']} | {r['supervision']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table3(out_dir: Path, methods, supervision) -> dict[str, Path]:
    rows = table3_rows(methods, supervision)
    return {
        "table3": atomic_write_text(Path(out_dir) / "table3.md", table3_markdown(rows)),
        "table3_csv": atomic_write_text(Path(out_dir) / "table3.csv", stats.rows_csv(rows)),
    }


def plot_figure3(methods, supervision, path: str | os.PathLike) -> Path:
    """Dice (epsilon 1) box plots by ICH subtype, methods ordered and labelled by supervision."""
    from lesionjax.eval.figures import plot_metric_boxplots

    groups = list(dict.fromkeys(supervision.get(n, "") for n in methods))
    order = sorted(methods, key=lambda n: groups.index(supervision.get(n, "")))  # stable
    labelled = {f"{n} ({supervision.get(n, '')})": methods[n] for n in order}
    return plot_metric_boxplots(
        labelled, path, metric="dice_eps1", title="Volume Dice by ICH subtype, by supervision"
    )


def plot_figure4(methods, path: str | os.PathLike) -> Path:
    """Welch p-value heatmaps of Dice, precision and recall (epsilon 1) over all volumes."""
    from lesionjax.eval.figures import plot_p_value_heatmap

    names = list(methods)
    tests = stats.welch_tests(methods, TABLE3_METRICS)
    panels = {_LABELS[m]: stats.p_value_matrix(tests, m, names) for m in TABLE3_METRICS}
    return plot_p_value_heatmap(panels, names, path, metric="Dice, precision, recall (eps 1)")


def plot_figure5(name: str, features: np.ndarray, labels: np.ndarray, path) -> Path:
    """t-SNE of one pretext model's features; labels: the slices' SLICE_LABELS flags (N, 6)."""
    from lesionjax.eval.figures import plot_tsne

    labels = np.asarray(labels, bool)
    return plot_tsne(
        features, labels[:, 0], path, subtype_labels=labels[:, 1:],
        title=f"t-SNE of {name} bottleneck features (validation pool)",
    )  # fmt: skip


CURVES = (
    ("train", "loss", "training loss"),
    ("val", "auc", "validation AUC"),
    ("val", "iou", "validation IoU"),
    ("val", "precision", "validation precision"),
    ("val", "recall", "validation recall"),
    ("val", "dice", "validation Dice"),
)


def plot_training_comparison(logs: Mapping[str, str | os.PathLike], path) -> Path:
    """The residual U-Net paper's Figure 4: training loss and the validation AUC, IoU,
    precision, recall and Dice per epoch, one line per model (``metrics.jsonl`` of each run)."""
    from lesionjax.eval.figures import _method_colour
    from lesionjax.eval.plotting import new_figure, save_figure
    from lesionjax.eval.report import read_metrics_log

    fig = new_figure((15, 8))
    axes = fig.subplots(2, 3).ravel()
    for k, (name, log) in enumerate(logs.items()):
        records = read_metrics_log(log)
        for ax, (split, key, label) in zip(axes, CURVES, strict=True):
            points = [(r["epoch"], r[key]) for r in records
                      if r.get("split") == split and key in r]  # fmt: skip
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, color=_method_colour(k), label=name, marker=".")
            ax.set_title(label)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Training curves")
    return save_figure(fig, path)
