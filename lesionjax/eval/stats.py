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
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from lesionjax.eval.metrics import summarize


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
    methods: Mapping[str, Sequence[Mapping]], metrics: Sequence[str], *, group: str = "all"
) -> list[dict]:
    """Rows of mean and std per method and metric over ``group`` ("all" or "lesion" volumes)."""
    rows = []
    for name, per_volume in methods.items():
        summary = summarize(per_volume, keys=metrics)[group]
        row = {"method": name, "n": summary["n"]}
        for m in metrics:
            row[f"{m}_mean"] = summary[m]["mean"]
            row[f"{m}_std"] = summary[m]["std"]
        rows.append(row)
    return rows


def table_markdown(rows: Sequence[Mapping], metrics: Sequence[str]) -> str:
    """Markdown of ``comparison_table`` rows: "mean ± std" per metric."""
    lines = ["| method | n | " + " | ".join(metrics) + " |", "|---|---:|" + "---|" * len(metrics)]
    for r in rows:
        cells = [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in metrics]
        lines.append(f"| {r['method']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rows_csv(rows: Sequence[Mapping]) -> str:
    """CSV text of a list of flat dicts (header from the first row)."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()
