"""Evaluation figures rendered from small synthetic results: every PNG is checked for a valid
header, a sensible size and non-blank pixels; the data behind the figures is checked too."""

import math
import os
from pathlib import Path

import numpy as np
import pytest

from lesionjax.core.labels import SUBTYPES
from lesionjax.eval import figures, stats
from lesionjax.eval.metrics import volume_metrics
from lesionjax.eval.report import plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Set LESIONJAX_FIGURE_DIR to keep the rendered figures for a look.
KEEP = os.environ.get("LESIONJAX_FIGURE_DIR")


def out_path(tmp_path: Path, name: str) -> Path:
    return Path(KEEP) / name if KEEP else tmp_path / name


def assert_png(path: Path, min_side: int = 200) -> np.ndarray:
    """A real PNG: magic bytes, decodable, at least min_side pixels a side, not one colour."""
    from matplotlib.image import imread

    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    pixels = imread(path)
    assert min(pixels.shape[:2]) >= min_side, f"{path}: only {pixels.shape[:2]} pixels"
    assert max(pixels.shape[:2]) < 6000, f"{path}: {pixels.shape[:2]} pixels is too large"
    assert pixels[..., :3].var() > 0, f"{path} is blank"
    return pixels


def disc(centre, radius, size=64):
    x, y = np.mgrid[:size, :size]
    return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 < radius**2


def synthetic_methods(n_volumes=24, seed=0):
    """Three methods on the same volumes: real metrics of shifted / shrunk disc predictions.

    Volumes 0..3 have no lesion; the others carry one or two subtypes.
    """
    rng = np.random.default_rng(seed)
    quality = {"U-Net": 1.0, "residual U-Net": 2.0, "ICH-only": 4.0}  # shift in voxels
    methods = {name: [] for name in quality}
    for i in range(n_volumes):
        lesion = i >= 4
        radius = rng.uniform(4, 10)
        gt = disc((32, 32), radius) if lesion else np.zeros((64, 64), bool)
        subtypes = []
        if lesion:
            subtypes = [SUBTYPES[i % 5]] + ([SUBTYPES[(i + 2) % 5]] if i % 3 == 0 else [])
        for name, shift in quality.items():
            jitter = int(rng.integers(0, 3))
            pred = np.roll(gt, int(shift) + jitter, axis=0)
            if not lesion and name == "ICH-only" and i % 2:
                pred = disc((10, 10), 3)  # a false positive
            metrics = volume_metrics(pred[..., None], gt[..., None], spacing=(1.0, 1.0, 5.0))
            metrics["hd"] = float(shift + jitter) if lesion else math.nan
            methods[name].append(
                {"case_id": f"case{i:02d}", "subtypes": ";".join(subtypes), **metrics}
            )
    return methods


def test_model_overlays(tmp_path):
    image = 0.3 * disc((32, 32), 28) + 0.5 * disc((20, 40), 6)
    gt = disc((20, 40), 6)
    examples = [
        {
            "image": image,
            "gt": gt,
            "pred": {"U-Net": np.roll(gt, 2, axis=0), "residual U-Net": gt, "ICH-only": gt & False},
            "title": f"case{k} z={k + 3}",
        }
        for k in range(3)
    ]
    pixels = assert_png(figures.plot_model_overlays(examples, out_path(tmp_path, "ov.png")))
    # 5 columns (image, ground truth, 3 models) x 3 rows: wider than tall.
    assert pixels.shape[1] > pixels.shape[0]


def test_model_overlays_reject_mismatched_masks(tmp_path):
    example = {"image": np.zeros((8, 8)), "gt": np.zeros((8, 8)), "pred": {"a": np.zeros((8, 7))}}
    with pytest.raises(ValueError, match="example 0: a shape"):
        figures.plot_model_overlays([example], tmp_path / "ov.png")


def test_empty_overlays_say_so(tmp_path):
    assert_png(figures.plot_model_overlays([], tmp_path / "ov.png"), min_side=100)


def test_volume_groups_follow_subtype_membership():
    methods = synthetic_methods()
    groups = dict(figures.volume_groups(methods))
    first = methods["U-Net"]
    assert len(groups["all volumes"]) == 24
    assert groups["lesion volumes"] == {v["case_id"] for v in first if v["gt_voxels"] > 0}
    for subtype in SUBTYPES:
        expected = {v["case_id"] for v in first if subtype in v["subtypes"].split(";")}
        assert groups[subtype] == expected
    # Volumes with two subtypes are in both groups: the subtype groups overlap.
    assert sum(len(groups[s]) for s in SUBTYPES) > len(groups["lesion volumes"])
    assert list(groups)[2:] == list(SUBTYPES)


def test_volume_subtypes_accepts_text_and_lists():
    assert figures.volume_subtypes({"subtypes": "subdural;epidural"}) == {"subdural", "epidural"}
    assert figures.volume_subtypes({"subtypes": ["subdural"]}) == {"subdural"}
    assert figures.volume_subtypes({"subtypes": ""}) == set()
    assert figures.volume_subtypes({}) == set()


def test_metric_boxplots(tmp_path):
    path = figures.plot_metric_boxplots(synthetic_methods(), out_path(tmp_path, "box.png"))
    pixels = assert_png(path)
    assert pixels.shape[1] > pixels.shape[0]  # 7 groups x 3 boxes side by side


def test_boxplots_of_an_unbounded_metric_with_nans(tmp_path):
    # hd is NaN on the lesion-free volumes: left out, not drawn at 0.
    assert_png(figures.plot_metric_boxplots(synthetic_methods(), tmp_path / "hd.png", metric="hd"))


def test_boxplots_without_subtypes(tmp_path):
    methods = synthetic_methods()
    for per_volume in methods.values():
        for v in per_volume:
            v.pop("subtypes")
    assert [g for g, _ in figures.volume_groups(methods)] == ["all volumes", "lesion volumes"]
    assert_png(figures.plot_metric_boxplots(methods, tmp_path / "box.png"))


def test_p_value_heatmap(tmp_path):
    methods = synthetic_methods()
    names = list(methods)
    rows = stats.welch_tests(methods, ["dice"])
    matrix = stats.p_value_matrix(rows, "dice", names)
    lesion = {n: stats.group_volumes(v, "lesion") for n, v in methods.items()}
    matrix_lesion = stats.p_value_matrix(stats.welch_tests(lesion, ["dice"]), "dice", names)
    # The U-Net (1-voxel shift) vs ICH-only (4-voxel shift) difference is significant.
    assert matrix[0, 2] < 0.05
    path = figures.plot_p_value_heatmap(
        {"all volumes": matrix, "lesion volumes": matrix_lesion},
        names,
        out_path(tmp_path, "pvalues.png"),
        metric="dice",
    )
    assert_png(path)


def test_p_value_heatmap_single_panel_with_zero_and_nan(tmp_path):
    p = np.array([[np.nan, 0.0, 0.2], [0.0, np.nan, np.nan], [0.2, np.nan, np.nan]])
    assert_png(figures.plot_p_value_heatmap(p, ["a", "b", "c"], tmp_path / "p.png"))


def test_p_value_heatmap_rejects_a_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(2, 2\) != \(3, 3\)"):
        figures.plot_p_value_heatmap(np.ones((2, 2)), ["a", "b", "c"], tmp_path / "p.png")


def clustered_features(seed=0):
    """Lesion and normal slices as two separated Gaussian clusters in 64 dims (PCA path)."""
    rng = np.random.default_rng(seed)
    n = 60
    lesion = np.arange(n) >= 30
    features = rng.normal(size=(n, 64)) + 6.0 * lesion[:, None]
    subtype_labels = np.zeros((n, len(SUBTYPES)), bool)
    for i in np.flatnonzero(lesion):
        subtype_labels[i, i % 5] = True
        if i % 7 == 0:
            subtype_labels[i, (i + 1) % 5] = True
    return features, lesion, subtype_labels


def test_tsne_embedding_keeps_clusters_apart():
    features, lesion, _ = clustered_features()
    xy = figures.tsne_embedding(features, seed=0)
    assert xy.shape == (60, 2)
    # Every point's nearest neighbour in the embedding is in its own cluster.
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (lesion[np.argmin(d, axis=1)] == lesion).all()
    np.testing.assert_allclose(figures.tsne_embedding(features, seed=0), xy)


def test_tsne_plot(tmp_path):
    features, lesion, subtype_labels = clustered_features()
    path = figures.plot_tsne(
        features, lesion, out_path(tmp_path, "tsne.png"), subtype_labels=subtype_labels
    )
    assert_png(path)


def test_tsne_plot_small_and_unlabelled(tmp_path):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(6, 8))
    lesion = np.array([0, 0, 0, 1, 1, 1], bool)
    assert_png(figures.plot_tsne(features, lesion, tmp_path / "tsne.png"))
    assert_png(figures.plot_tsne(features[:3], lesion[:3], tmp_path / "few.png"), min_side=100)


def test_tsne_plot_rejects_mismatched_labels(tmp_path):
    with pytest.raises(ValueError, match="5 feature rows but 4 lesion flags"):
        figures.plot_tsne(np.zeros((5, 3)), np.zeros(4, bool), tmp_path / "t.png")
    with pytest.raises(ValueError, match="subtype labels shape"):
        figures.plot_tsne(
            np.zeros((5, 3)), np.zeros(5, bool), tmp_path / "t.png", subtype_labels=np.zeros((5, 2))
        )


def test_training_curves_mark_what_was_not_logged(tmp_path):
    # What the trainer logs: train loss and lr every few steps, validation Dice per epoch.
    history = []
    for step in range(1, 61):
        history.append(
            {"step": step, "epoch": step / 10, "split": "train", "loss": 1 / step, "lr": 1e-3}
        )
        if step % 10 == 0:
            history.append({"step": step, "epoch": step / 10, "split": "val", "dice": step / 60})
    path = plot_training_curves(history, out_path(tmp_path, "curves.png"))
    pixels = assert_png(path)
    # Six panels in 3 columns: loss, dice, precision, recall, auc (not logged) and lr.
    assert pixels.shape[1] > 1.5 * pixels.shape[0]
    only_loss = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
    narrow = plot_training_curves(only_loss, tmp_path / "one.png", required=())
    assert assert_png(narrow).shape[1] < pixels.shape[1] / 2


def test_figures_leave_no_temporary_files(tmp_path):
    methods = synthetic_methods()
    figures.plot_metric_boxplots(methods, tmp_path / "box.png")
    features, lesion, subtype_labels = clustered_features()
    figures.plot_tsne(features, lesion, tmp_path / "tsne.png", subtype_labels=subtype_labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box.png", "tsne.png"]
