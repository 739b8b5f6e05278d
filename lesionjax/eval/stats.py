"""Comparing methods: Welch's two-sided t-tests on per-volume metrics and summary tables.

Each method is a list of per-volume dicts (as written to ``eval/per_volume.json``). Tests pair
every two methods per metric with Welch's unequal-variance t-test, as the label-efficient ICH
paper does (volumes are not assumed matched; use a paired test yourself when they are).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from lesionjax.eval.metrics import summarize

# Per-volume keys that describe the case or the raw counts rather than score a method.
NON_METRIC_KEYS = frozenset(
    {
        "case_id",
        "fold",
        "process",
        "gt_voxels",
        "pred_voxels",
        "gt_ml",
        "pred_ml",
        "gt_lesions",
        "pred_lesions",
    }
)
# Display order of the known metrics; any other numeric key follows, alphabetically.
METRIC_ORDER = (
    "dice",
    "iou",
    "precision",
    "recall",
    "hd",
    "hd95",
    "assd",
    "nsd",
    "rvd",
    "auc",
    "lesion_f1",
    "lesion_detection",
    "lesion_count_diff",
    "avd_ml",
)
GROUPS = ("all", "lesion")


def _is_metric_value(value) -> bool:
    return isinstance(value, int | float | np.floating | np.integer) and not isinstance(
        value, bool | np.bool_
    )


def metric_keys(*per_volume_lists: Sequence[Mapping]) -> list[str]:
    """The numeric metric keys present in the per-volume dicts, in a stable reading order.

    A key counts when at least one volume of any list holds a number (int or float, NaN
    included) for it; bookkeeping keys (``NON_METRIC_KEYS``) and strings are left out. Order:
    ``METRIC_ORDER``, then their ``*_eps1`` variants, then the rest alphabetically, so tables of
    runs evaluated with more (or fewer) metrics still line up.
    """
    found: set[str] = set()
    for per_volume in per_volume_lists:
        for volume in per_volume:
            found.update(
                k for k, v in volume.items() if k not in NON_METRIC_KEYS and _is_metric_value(v)
            )
    ordered = [k for k in METRIC_ORDER if k in found]
    ordered += [f"{k}_eps1" for k in METRIC_ORDER if f"{k}_eps1" in found]
    return ordered + sorted(found - set(ordered))


def group_volumes(per_volume: Sequence[Mapping], group: str) -> list[Mapping]:
    """The volumes of ``group``: "all", or "lesion" (non-empty ground truth, ``gt_voxels > 0``)."""
    if group == "all":
        return list(per_volume)
    if group == "lesion":
        return [v for v in per_volume if v.get("gt_voxels", 0) > 0]
    raise ValueError(f"unknown volume group {group!r}; expected one of {GROUPS}")


def _values(per_volume: Sequence[Mapping], metric: str) -> np.ndarray:
    vals = [v.get(metric) for v in per_volume]
    return np.asarray([x for x in vals if x is not None and math.isfinite(x)], np.float64)


def welch_tests(methods: Mapping[str, Sequence[Mapping]], metrics: Sequence[str]) -> list[dict]:
    """One row per (metric, method a, method b): means, t statistic and two-sided p-value.

    NaN values are left out per method; a pair with fewer than 2 values on either side gets
    p = NaN (the test is undefined), and two constant, equal samples get p = 1.
    """
    rows = []
    for metric in metrics:
        for a, b in itertools.combinations(methods, 2):
            x, y = _values(methods[a], metric), _values(methods[b], metric)
            row = {"metric": metric, "a": a, "b": b, "n_a": len(x), "n_b": len(y)}
            row["mean_a"] = float(x.mean()) if len(x) else math.nan
            row["mean_b"] = float(y.mean()) if len(y) else math.nan
            if len(x) < 2 or len(y) < 2:
                row["t"], row["p"] = math.nan, math.nan
            elif np.ptp(x) == 0 and np.ptp(y) == 0:
                same = x[0] == y[0]
                row["t"], row["p"] = (
                    (0.0, 1.0) if same else (math.copysign(math.inf, x[0] - y[0]), 0.0)
                )
            else:
                with warnings.catch_warnings():
                    # Nearly constant samples: SciPy warns of precision loss but the p-value
                    # is still the right limit (close to 1 or 0); a CLI user cannot act on it.
                    warnings.simplefilter("ignore", RuntimeWarning)
                    result = stats.ttest_ind(x, y, equal_var=False)
                row["t"], row["p"] = float(result.statistic), float(result.pvalue)
            rows.append(row)
    return rows


def p_value_matrix(rows: Sequence[Mapping], metric: str, names: Sequence[str]) -> np.ndarray:
    """(M, M) symmetric matrix of p-values for one metric (diagonal NaN), for a heatmap."""
    index = {n: i for i, n in enumerate(names)}
    out = np.full((len(names), len(names)), np.nan)
    for r in rows:
        if r["metric"] == metric:
            i, j = index[r["a"]], index[r["b"]]
            out[i, j] = out[j, i] = r["p"]
    return out


def comparison_table(
    methods: Mapping[str, Sequence[Mapping]],
    metrics: Sequence[str],
    *,
    group: str = "all",
    counts: bool = False,
) -> list[dict]:
    """Rows of mean and std per method and metric over ``group`` ("all" or "lesion" volumes).

    Population std (ddof=0) as `metrics.summarize`; NaN values are left out. With ``counts``
    each row also holds ``{metric}_n``, the number of finite values averaged (a distance metric
    is undefined on some volumes, so it can be fewer than the row's ``n``).
    """
    rows = []
    for name, per_volume in methods.items():
        summary = summarize(per_volume, keys=metrics)[group]
        row = {"method": name, "n": summary["n"]}
        for m in metrics:
            row[f"{m}_mean"] = summary[m]["mean"]
            row[f"{m}_std"] = summary[m]["std"]
            if counts:
                row[f"{m}_n"] = summary[m]["n"]
        rows.append(row)
    return rows


def _md(text) -> str:
    return str(text).replace("|", "\\|")


def _mean_std_cell(row: Mapping, metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if mean is None or not math.isfinite(mean):
        return "–"
    cell = f"{mean:.3f} ± {std:.3f}"
    n = row.get(f"{metric}_n")
    return cell if n is None or n == row["n"] else f"{cell} (n={n})"


def table_markdown(rows: Sequence[Mapping], metrics: Sequence[str]) -> str:
    """Markdown of ``comparison_table`` rows: "mean ± std" per metric ("–" when undefined,
    "(n=k)" when the row has counts and NaN values were left out)."""
    lines = ["| method | n | " + " | ".join(metrics) + " |", "|---|---:|" + "---|" * len(metrics)]
    for r in rows:
        cells = [_mean_std_cell(r, m) for m in metrics]
        lines.append(f"| {_md(r['method'])} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_p(p: float) -> str:
    """A p-value for tables and heatmaps: 3 decimals down to 0.001, then scientific."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if p == 0:
        return "0"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def welch_markdown(rows: Sequence[Mapping], *, alpha: float = 0.05) -> str:
    """Markdown of ``welch_tests`` rows (optionally with a "group" key); p < alpha in bold."""
    has_group = any("group" in r for r in rows)
    head = ["group"] if has_group else []
    head += ["metric", "a", "b", "n_a", "n_b", "mean a", "mean b", "t", "p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (len(head) - 4) + "---:|" * 4]
    for r in rows:
        cells = [_md(r.get("group", ""))] if has_group else []
        p = format_p(r["p"])
        if math.isfinite(r["p"]) and r["p"] < alpha:
            p = f"**{p}**"
        cells += [
            _md(r["metric"]),
            _md(r["a"]),
            _md(r["b"]),
            str(r["n_a"]),
            str(r["n_b"]),
            "–" if not math.isfinite(r["mean_a"]) else f"{r['mean_a']:.3f}",
            "–" if not math.isfinite(r["mean_b"]) else f"{r['mean_b']:.3f}",
            "–" if math.isnan(r["t"]) else f"{r['t']:.3f}",
            p,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rows_csv(rows: Sequence[Mapping]) -> str:
    """CSV text of a list of flat dicts (header from the first row)."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def check_same_volumes(
    methods: Mapping[str, Sequence[Mapping]], sources: Mapping[str, str] | None = None
) -> list[str]:
    """The common case ids of all methods; ValueError naming the difference when they differ.

    Comparing methods on different volumes would compare the volumes, not the methods. A case
    listed twice in one method is an error too. ``sources`` ({name: folder}) only names the
    offending runs in the message.
    """
    sources = sources or {}
    ids: dict[str, list[str]] = {}
    for name, per_volume in methods.items():
        where = sources.get(name, name)
        cases = [str(v["case_id"]) for v in per_volume]
        duplicates = sorted({c for c in cases if cases.count(c) > 1})
        if duplicates:
            raise ValueError(f"{where}: case(s) listed more than once: {', '.join(duplicates[:5])}")
        ids[name] = sorted(cases)
    (first, reference), *others = ids.items()
    for name, cases in others:
        if cases != reference:
            a, b = set(reference), set(cases)
            where_a, where_b = sources.get(first, first), sources.get(name, name)
            raise ValueError(
                f"{where_a} and {where_b} were evaluated on different volumes ({len(a)} vs "
                f"{len(b)}; only in {where_a}: {', '.join(sorted(a - b)[:5]) or '-'}; only in "
                f"{where_b}: {', '.join(sorted(b - a)[:5]) or '-'}); compare runs evaluated on "
                "the same split of the same data"
            )
    return reference
