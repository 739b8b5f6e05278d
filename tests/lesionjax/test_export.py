"""``lesionjax.export``: one predictor file that predicts as the runs do, without them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from lesionjax import export
from lesionjax.eval.runs import load_model


@pytest.fixture(scope="module")
def exported(tiny_run, tiny_run_seed1, tmp_path_factory):
    """Two different runs (seeds 0 and 1) in one file, exported for cpu and cuda (default)."""
    out = tmp_path_factory.mktemp("export") / "model.ljx"
    export.write_predictor_file([tiny_run, tiny_run_seed1], out)
    return out


@pytest.mark.slow
def test_the_file_holds_no_pickle_and_says_what_it_is(exported, tiny_run):
    with zipfile.ZipFile(exported) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
        assert names == {
            "manifest.json",
            "member0.stablehlo",
            "member0.npz",
            "member1.stablehlo",
            "member1.npz",
        }
        for name in ("member0.npz", "member1.npz"):
            # Plain arrays: numpy refuses to load pickled objects here.
            import io

            with np.load(io.BytesIO(z.read(name)), allow_pickle=False) as npz:
                assert all(npz[k].dtype != object for k in npz.files)
    assert manifest["format"] == "lesionjax-predictor"
    assert manifest["platforms"] == ["cpu", "cuda"]
    member = manifest["members"][0]
    assert member["run"] == str(tiny_run) and member["channels"] == 3
    assert member["plan"] == json.loads((tiny_run / "preprocessing.json").read_text())["plan"]


@pytest.mark.slow
def test_each_member_matches_its_own_run_on_any_batch_size(exported, tiny_run, tiny_run_seed1):
    members = export.load_predictor_file(exported)
    rng = np.random.default_rng(0)
    h, w = members[0].predictor.size
    for member, run in zip(members, (tiny_run, tiny_run_seed1), strict=True):
        model = load_model(run)
        for batch in (1, 3, 32):  # the symbolic batch dimension
            member.predictor.batch_size = batch
            slices = rng.integers(0, 256, (7, h, w, 3), dtype=np.uint8)
            volume = np.moveaxis(slices, 0, 2)
            want = model.predictor.predict_volume(model.state, volume)
            got = member.predictor.predict_volume(None, volume)
            assert got.shape == want.shape == (h, w, 7)
            np.testing.assert_allclose(got, want, atol=1e-5)
    # The two members differ: a mix-up of their weights would show above.
    volume = np.moveaxis(rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8), 0, 2)
    a, b = (m.predictor.predict_volume(None, volume) for m in members)
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.slow
def test_predict_with_the_file_gives_the_runs_masks_without_the_run(
    exported, tiny_run, tiny_run_seed1, tiny_phantom, tmp_path, child_env
):
    import nibabel as nib

    moved = tmp_path / "moved.ljx"
    shutil.copy(exported, moved)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(tiny_phantom / "images" / "phantom_003.nii.gz", inputs)
    outs = {}
    for name, model in (("file", [str(moved)]), ("runs", [str(tiny_run), str(tiny_run_seed1)])):
        outs[name] = tmp_path / name
        argv = [
            sys.executable,
            "-m",
            "lesionjax.predict",
            "--model",
            *model,
            "--input",
            str(inputs),
            "--output",
            str(outs[name]),
            "--no-progress",
            "--no-overlays",
            "--save-probabilities",
        ]
        done = subprocess.run(argv, env=child_env(1), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    a = nib.load(str(outs["file"] / "phantom_003_prob.nii.gz")).get_fdata()
    b = nib.load(str(outs["runs"] / "phantom_003_prob.nii.gz")).get_fdata()
    np.testing.assert_allclose(a, b, atol=1 / 255 + 1e-9)  # stored to 1/255
    ma = np.asarray(nib.load(str(outs["file"] / "phantom_003_mask.nii.gz")).dataobj)
    mb = np.asarray(nib.load(str(outs["runs"] / "phantom_003_mask.nii.gz")).dataobj)
    np.testing.assert_array_equal(ma, mb)


def test_a_file_that_is_not_a_predictor_is_one_error_line(tmp_path, capsys):
    from lesionjax import predict

    bad = tmp_path / "bad.ljx"
    bad.write_bytes(b"not a zip")
    rc = predict.main(["--model", str(bad), "--input", str(tmp_path), "--output", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith(f"error: {bad}: not a readable")


@pytest.mark.slow
def test_a_file_exported_for_other_platforms_is_refused_at_load(exported, tmp_path):
    other = tmp_path / "tpu_only.ljx"
    with zipfile.ZipFile(exported) as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "manifest.json":
                manifest = json.loads(data)
                manifest["platforms"] = ["tpu"]
                data = json.dumps(manifest).encode()
            dst.writestr(item, data)
    with pytest.raises(export.ExportError, match="exported for tpu, this machine runs cpu"):
        export.load_predictor_file(other)


@pytest.mark.slow
def test_a_3d_run_is_refused_from_its_config_before_any_weights_are_read(tiny_run, tmp_path):
    # A 3D fold run whose only checkpoint is an empty folder: restoring it would fail with
    # Orbax's error, so the refusal must come from the saved config alone.
    run = tmp_path / "fold_0"
    (run / "checkpoints" / "5").mkdir(parents=True)
    config = json.loads((tiny_run / "config.json").read_text())
    config["task"], config["data"]["layout"] = "cascade3d", "3d"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(export.ExportError, match="a 3D model; predictor files hold 2D"):
        export.write_predictor_file([run], tmp_path / "model.ljx")
    assert not (tmp_path / "model.ljx").exists()
