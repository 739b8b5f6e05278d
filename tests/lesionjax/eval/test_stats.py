"""Welch t-tests between methods and the comparison tables."""

import math

import numpy as np
import pytest

from lesionjax.eval import stats


def _vols(dices, gt=100):
    return [{"case_id": f"c{i}", "dice": d, "gt_voxels": gt} for i, d in enumerate(dices)]


def test_welch_matches_the_formula():
    a, b = [0.8, 0.7, 0.9, 0.85], [0.6, 0.65, 0.5]
    (row,) = stats.welch_tests({"A": _vols(a), "B": _vols(b)}, ["dice"])
    x, y = np.array(a), np.array(b)
    se2 = x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y)
    t = (x.mean() - y.mean()) / math.sqrt(se2)
    df = se2**2 / (
        (x.var(ddof=1) / len(x)) ** 2 / (len(x) - 1) + (y.var(ddof=1) / len(y)) ** 2 / (len(y) - 1)
    )
    from scipy.stats import t as student_t

    assert row["t"] == pytest.approx(t, rel=1e-9)
    assert row["p"] == pytest.approx(2 * student_t.sf(abs(t), df), rel=1e-9)
    assert (row["a"], row["b"], row["n_a"], row["n_b"]) == ("A", "B", 4, 3)


def test_every_pair_of_methods_is_tested_and_nans_are_left_out():
    methods = {"A": _vols([0.1, 0.2, float("nan")]), "B": _vols([0.3, 0.4]), "C": _vols([0.5])}
    rows = stats.welch_tests(methods, ["dice"])
    assert [(r["a"], r["b"]) for r in rows] == [("A", "B"), ("A", "C"), ("B", "C")]
    assert rows[0]["n_a"] == 2
    assert math.isnan(rows[1]["p"])  # C has one value: undefined


def test_constant_samples():
    rows = stats.welch_tests({"A": _vols([1.0, 1.0]), "B": _vols([1.0, 1.0])}, ["dice"])
    assert rows[0]["p"] == 1.0
    rows = stats.welch_tests({"A": _vols([1.0, 1.0]), "B": _vols([0.5, 0.5])}, ["dice"])
    assert rows[0]["p"] == 0.0 and rows[0]["t"] == math.inf


def test_p_value_matrix_is_symmetric():
    methods = {
        "A": _vols([0.1, 0.2, 0.3]),
        "B": _vols([0.3, 0.4, 0.5]),
        "C": _vols([0.5, 0.6, 0.9]),
    }
    rows = stats.welch_tests(methods, ["dice"])
    m = stats.p_value_matrix(rows, "dice", ["A", "B", "C"])
    assert np.allclose(m, m.T, equal_nan=True) and np.isnan(np.diag(m)).all()
    assert m[0, 2] == pytest.approx(rows[1]["p"])


def test_tables_in_markdown_and_csv():
    methods = {"A": _vols([0.5, 0.7]), "B": _vols([0.9, 0.9])}
    rows = stats.comparison_table(methods, ["dice"])
    assert rows[0]["dice_mean"] == pytest.approx(0.6) and rows[0]["dice_std"] == pytest.approx(0.1)
    md = stats.table_markdown(rows, ["dice"])
    assert "| A | 2 | 0.600 ± 0.100 |" in md and "| B | 2 | 0.900 ± 0.000 |" in md
    csv_text = stats.rows_csv(rows)
    assert csv_text.splitlines()[0] == "method,n,dice_mean,dice_std"
