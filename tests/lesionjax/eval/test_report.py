"""Evaluation report: JSONL reader, figures rendered from small synthetic results, report.md."""

import json
import math

import numpy as np
import pytest

from lesionjax.eval.metrics import summarize, volume_metrics
from lesionjax.eval.plotting import to_display
from lesionjax.eval.report import (
    plot_overlays,
    plot_training_curves,
    read_metrics_log,
    write_report,
)


def _assert_real_png(path, min_side=150):
    """The file is a decodable PNG of a reasonable size that is not one flat colour."""
    from matplotlib.image import imread

    assert path.is_file(), f"{path} was not written"
    pixels = imread(path)
    assert min(pixels.shape[:2]) >= min_side, f"{path}: only {pixels.shape[:2]} pixels"
    assert pixels[..., :3].std() > 0.01, f"{path} is a single colour"


def _history(steps=200, steps_per_epoch=20):
    rng = np.random.default_rng(0)
    history = []
    for step in range(1, steps + 1):
        epoch = step / steps_per_epoch
        loss = math.exp(-epoch / 3) + 0.05 * rng.random()
        history.append(
            {"step": step, "epoch": epoch, "split": "train", "loss": loss, "lr": 1e-3 * 0.96**epoch}
        )
        if step % steps_per_epoch == 0:
            history.append(
                {"step": step, "epoch": epoch, "split": "val", "loss": loss, "dice": 1 - loss}
            )
    return history


def _disc_slice(centre, radius=6, size=48):
    x, y = np.mgrid[:size, :size]
    lesion = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 < radius**2
    head = (x - size / 2) ** 2 + (y - size / 2) ** 2 < (0.45 * size) ** 2
    return np.clip(0.3 * head + 0.6 * lesion, 0.0, 1.0), lesion


def _examples():
    image, gt = _disc_slice((20, 30))
    shifted = np.roll(gt, 2, axis=0)
    return [
        {"image": image, "gt": gt, "pred": shifted, "title": "case 1, z=3"},
        {"image": image, "gt": gt, "pred": gt.copy(), "title": "case 1, z=4"},
    ]


def test_read_metrics_log_tolerates_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert read_metrics_log(path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]


def test_read_metrics_log_skips_a_truncated_middle_line(tmp_path):
    # A kill cut step 3's record short; the resumed run appended its next record to that line.
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1}\n{"step": 2}\n{"step": 3, "lo{"step": 3, "loss": 1}\n{"step": 4}\n'
    )
    assert read_metrics_log(path) == [{"step": 1}, {"step": 2}, {"step": 4}]


def test_read_metrics_log_keeps_one_record_per_repeated_step(tmp_path):
    # Steps 3-4 were logged, the run was killed after the checkpoint of step 2, and resumed.
    first = [{"step": s, "split": "train", "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    val = [{"step": 2, "split": "val", "dice": 0.1}]
    again = [{"step": s, "split": "train", "loss": 2.0 / s} for s in (3, 4, 5)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in first + val + again))
    records = read_metrics_log(path)
    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
    assert train == [(1, 1.0), (2, 0.5), (3, 2 / 3), (4, 0.5), (5, 0.4)]
    assert [r for r in records if r["split"] == "val"] == val


def test_read_metrics_log_rejects_a_file_without_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("not json\nnor this\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: no line is a JSON object"):
        read_metrics_log(path)


def test_read_metrics_log_round_trip(tmp_path):
    history = _history(steps=40)
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in history))
    assert read_metrics_log(path) == history


def test_to_display_puts_anterior_up_and_right_on_the_right():
    slice_xy = np.zeros((4, 3))  # X (left -> right) = 4, Y (posterior -> anterior) = 3
    slice_xy[3, 2] = 1.0  # the most right, most anterior voxel
    shown = to_display(slice_xy)
    assert shown.shape == (3, 4)
    assert shown[0, 3] == 1.0, "expected the top-right corner of the screen"


def test_plot_training_curves_writes_png(tmp_path):
    path = plot_training_curves(_history(), tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    _assert_real_png(path)


def test_plot_training_curves_falls_back_to_step(tmp_path):
    history = [{k: v for k, v in r.items() if k != "epoch"} for r in _history()]
    _assert_real_png(plot_training_curves(history, tmp_path / "curves.png"))


def test_plot_training_curves_empty_history_writes_no_data_figure(tmp_path):
    _assert_real_png(plot_training_curves([], tmp_path / "curves.png"))


def test_plot_overlays_single_prediction(tmp_path):
    _assert_real_png(plot_overlays(_examples(), tmp_path / "overlays.png"))


def test_plot_overlays_several_models(tmp_path):
    examples = _examples()
    for ex in examples:
        ex["pred"] = {"U-Net": ex["pred"], "residual U-Net": np.zeros_like(ex["gt"])}
    _assert_real_png(plot_overlays(examples, tmp_path / "overlays.png"))


def test_plot_overlays_rejects_mismatched_shapes(tmp_path):
    example = _examples()[0]
    example["pred"] = example["pred"][:-1]
    with pytest.raises(ValueError, match="example 0: prediction shape"):
        plot_overlays([example], tmp_path / "overlays.png")


def test_figures_leave_no_temporary_files(tmp_path):
    plot_training_curves(_history(), tmp_path / "curves.png")
    plot_overlays(_examples(), tmp_path / "overlays.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "overlays.png"]


def _per_volume():
    per_volume = []
    for case_id, shift in [("case10", 1), ("case2", 0), ("case1", 3)]:
        _, gt = _disc_slice((20, 30))
        pred = np.roll(gt, shift, axis=0)
        metrics = volume_metrics(pred[..., None], gt[..., None], spacing=(0.5, 0.5, 5.0))
        per_volume.append({"case_id": case_id, **metrics})
    return per_volume


def test_write_report(tmp_path):
    per_volume = _per_volume()
    out = tmp_path / "report"
    report = write_report(
        out,
        summary=summarize(per_volume),
        per_volume=per_volume,
        history=_history(),
        overlay_examples=_examples(),
        title="test run",
    )
    assert report == out / "report.md"
    text = report.read_text()
    assert text.startswith("# test run\n")
    assert "| metric | all volumes (n=3) | lesion volumes (n=3) |" in text
    header = "| case | dice | iou | precision | recall | lesion_f1 | gt_lesions | pred_lesions |"
    assert header + " gt_ml | pred_ml |" in text
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| case")]
    assert rows[1:] == ["case1", "case2", "case10"], "per-volume rows in natural case order"
    assert "](training_curves.png)" in text
    assert "](overlays.png)" in text
    _assert_real_png(out / "training_curves.png")
    _assert_real_png(out / "overlays.png")
