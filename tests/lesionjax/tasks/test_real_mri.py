"""Real MRI end to end: MS lesions on FLAIR from ../shared/data/mri_ms_lesjak, shards -> 2D U-Net
trained on one patient -> evaluated on the other (leave-one-patient-out) and, through
``python -m lesionjax.evaluate --split train``, on the training patient; configs/mri_lesjak.py.
Skips when ../shared is absent (a fresh clone)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

# Floors, measured against trivial and oracle baselines on these two volumes (2 mm, z-scored
# FLAIR; see the test's docstring). Measured with the config on 2026-11-22 (60 epochs):
# held-out patient07 Dice 0.030, recall 0.53; training patient19 Dice 0.855. The test trains
# half the config's epochs (the suite's time): on 2026-12-02 with the final MRI config, 30
# epochs gave 0.018 / 0.545 / 0.725 (15 epochs: 0.011 / 0.572 / 0.529, below two floors).
EPOCHS = 30
HELD_OUT_DICE_FLOOR = 0.015
HELD_OUT_RECALL_FLOOR = 0.3
TRAIN_DICE_FLOOR = 0.6


@pytest.mark.slow
def test_lesjak_leave_one_patient_out(shared_data, tmp_path, child_env):
    """Trains on patient19 (52 mL of lesions), tests on patient07 (1.0 mL at 2 mm).

    Why these floors (measured on the shards this config builds): predicting the whole brain
    scores Dice 0.0017 on patient07 and 0.082 on patient19; the best single threshold of the
    normalized FLAIR for patient19, transferred to patient07, scores 0.037 there, and each
    volume's own best threshold (an oracle) 0.354 and 0.742. Patient07's 1 mL of lesions against
    patient19's 52 mL is a lesion-load shift that no model trained on one patient calibrates for,
    so the held-out check is that the model finds the unseen patient's lesions (recall > 0.3,
    where a misregistered mask or prediction scores ~0) at a Dice ~10x the whole-brain
    predictor's; and that it learned its training patient (Dice > 0.6, 7x the whole-brain
    predictor and near the oracle threshold).
    """
    data = shared_data / "mri_ms_lesjak"
    if not data.is_dir():
        pytest.skip(f"{data} is absent")
    workdir = tmp_path / "run"
    env = child_env(1)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lesionjax.main",
            f"--config={REPO / 'configs' / 'mri_lesjak.py'}",
            f"--workdir={workdir}",
            f"--config.data.raw_dir={data}",
            f"--config.train.epochs={EPOCHS}",
            "--config.progress=False",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((workdir / "shards" / "manifest.json").read_text())
    by_id = {v["case_id"]: v for v in manifest["volumes"]}
    assert set(by_id) == {"patient07", "patient19"}
    assert by_id["patient07"]["fold"] == 0 and by_id["patient19"]["fold"] == 1
    for v in by_id.values():
        assert v["modality"] == "MR" and v["spacing"] == [2.0, 2.0, 2.0]
        assert 40 < v["n_slices"] < 91  # slices without brain were dropped
    held_out = json.loads((workdir / "eval" / "per_volume.json").read_text())
    assert [v["case_id"] for v in held_out] == ["patient07"]
    assert held_out[0]["dice"] > HELD_OUT_DICE_FLOOR, held_out[0]
    assert held_out[0]["recall"] > HELD_OUT_RECALL_FLOOR, held_out[0]

    result = subprocess.run(
        [sys.executable, "-m", "lesionjax.evaluate", f"--workdir={workdir}", "--split=train",
         "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    train = json.loads((workdir / "eval_train" / "per_volume.json").read_text())
    assert [v["case_id"] for v in train] == ["patient19"]
    assert train[0]["dice"] > TRAIN_DICE_FLOOR, train[0]
