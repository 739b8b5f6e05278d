"""Experiment configs load, hold the papers' settings, and fail fast without their data."""

import os
import subprocess
import sys
from pathlib import Path

from ml_collections import config_flags  # noqa: F401 - the loader the main job uses

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, arg=None):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_seg_cq500_holds_the_mixed_baseline():
    c = _load("seg_cq500")
    assert c.data.windows == ((-50.0, 150.0),) and c.data.size == 256
    assert (c.train.batch_size, c.train.epochs) == (32, 40)
    assert (c.optim.lr, c.optim.decay_rate, c.optim.weight_decay) == (1e-3, 0.96, 1e-6)
    assert (c.data.policy, c.data.normal_ratio, c.data.normal_weight) == ("mixed", 2.0, 0.2)
    assert c.data.n_folds == 5 and c.loss == "dice"
    assert tuple(c.model.features) == (32, 64, 128, 256, 512)
    assert (c.augment.translate, c.augment.rotate_deg, tuple(c.augment.scale)) == (
        0.1,
        15.0,
        (0.9, 1.1),
    )
    assert _load("seg_cq500", "ich_only").data.policy == "lesion"


def test_demo_config_is_locked_and_consistent():
    c = _load("demo")
    assert c.is_locked
    levels = len(c.model.features) - 1
    assert c.data.phantom.shape[0] % 2**levels == 0


def test_seg_cq500_without_data_fails_fast_with_directions(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "lesionjax.main", f"--config={REPO / 'configs' / 'seg_cq500.py'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert "Seg-CQ500 was not found at 'data/seg_cq500'" in out.stderr
    assert "configs/demo.py" in out.stderr
    assert not (tmp_path / "runs" / "seg_cq500_mixed" / "checkpoints").exists()


def test_pretext_configs_hold_the_papers_settings_and_match_the_demo_and_pool():
    from lesionjax.pretext.objectives import DEFAULT_HEADS

    demo, pool = _load("demo"), _load("pretext/pool")
    batch = {"context_restoration": 32, "global_contrastive": 60, "local_contrastive": 24,
             "binary": 64, "multilabel_bce": 64, "multilabel_dice": 64}  # fmt: skip
    for name, size in batch.items():
        c = _load(f"pretext/{name}")
        assert c.is_locked and c.task == "pretext"
        assert c.train.batch_size == size, name
        assert (c.optim.lr, c.optim.decay_rate, c.optim.weight_decay) == (1e-3, 0.96, 1e-6)
        assert c.pretext.temperature == 0.1
        # the encoder transfers into the demo's U-Net, trained on the pool's slices
        assert tuple(c.model.features) == tuple(demo.model.features)
        assert tuple(c.data.windows) == tuple(demo.data.windows)
        for key in ("n_cases", "seed", "prefix", "shape", "spacing"):
            assert c.data.phantom[key] == pool.data.phantom[key], (name, key)
        assert c.data.target == "slice_labels"
        paper = _load(f"pretext/{name}", "paper")
        assert paper.train.epochs == 50 and tuple(paper.model.features)[-1] == 512
        assert paper.data.size == 256
    c = _load("pretext/context_restoration")
    assert (c.pretext.swaps, c.pretext.patch, c.pretext.reference_size) == (20, 20, 256)
    c = _load("pretext/local_contrastive")
    assert (c.pretext.decoder_blocks, c.pretext.regions, c.pretext.region_size) == (3, 20, 3)
    assert c.train.init_parts == "encoder"
    assert _load("pretext/multilabel_dice").pretext.loss == "dice"
    assert DEFAULT_HEADS == {
        "global_contrastive": (512, 128),
        "local_contrastive": (128, 32),
        "binary": (1024, 256, 2),
        "multilabel": (1024, 256, 7),
    }


def test_atlas2_resunet_holds_the_papers_setup_and_its_analogue_only_the_data():
    c = _load("atlas2_resunet")
    assert (c.data.dataset, c.data.axial_slices, tuple(c.data.slice_range)) == ("atlas2", 100,
                                                                              (70, 90))  # fmt: skip
    assert (c.data.n_folds, c.data.test_fold, c.data.val_fold) == (5, 0, 1)  # 60 / 20 / 20
    assert c.model.name == "resunet2d" and c.model.dropout == 0.5
    assert tuple(c.model.features) == (32, 64, 128, 256, 512)
    assert (c.augment.flip_prob, c.augment.rotate_deg, tuple(c.augment.scale)) == (
        0.5, 15.0, (0.9, 1.1)
    )  # fmt: skip
    unet = _load("atlas2_resunet", "unet")
    assert unet.model.name == "unet2d"
    # the baseline differs from the residual model in the model alone
    assert unet.data.to_dict() == c.data.to_dict()
    mni, mni_unet = _load("atlas2_resunet", "mni152"), _load("atlas2_resunet", "mni152_unet")
    assert mni.data.source == "real_anatomy" and mni.data.real_anatomy.kind == "stroke"
    assert mni.data.to_dict() == mni_unet.data.to_dict()
    assert (mni.model.name, mni_unet.model.name) == ("resunet2d", "unet2d")


def test_atlas2_without_data_fails_fast_with_directions(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "lesionjax.main",
         f"--config={REPO / 'configs' / 'atlas2_resunet.py'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert "ATLAS R2.0 was not found at 'data/atlas2'" in out.stderr
    assert "atlas2_resunet.py:mni152" in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "lesionjax.main",
         f"--config={REPO / 'configs' / 'atlas2_resunet.py'}:mni152",
         f"--config.data.real_anatomy.host={tmp_path / 'nothing'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1
    assert f"{tmp_path / 'nothing'}: data.real_anatomy.host not found" in out.stderr
    assert "MNI152 T1 template" in out.stderr and "Traceback" not in out.stderr


def test_experiment_variants_build_every_runs_config():
    """Every job config of the experiments resolves (each override names a real key)."""
    from lesionjax.experiment import (
        METHODS,
        _method_config,
        _model_config,
        _pretext_config,
        _tsne_pool_config,
        load_config_file,
    )  # fmt: skip

    base = REPO / "configs" / "experiments"
    for variant in ("", "tiny", "real_anatomy"):
        exp = load_config_file(f"label_efficient.py:{variant}" if variant else
                               "label_efficient.py", base)  # fmt: skip
        work = Path("/nonexistent/exp")
        for key in exp.methods:
            if not METHODS[key].icm_of:
                c = _method_config(exp, base, work, key, exp.folds[0])
                assert c.data.shards_dir == str(work / "shards")
        for task in ("context_restoration", "local_contrastive", "multilabel_bce"):
            c = _pretext_config(exp, base, work, task)
            assert c.task == "pretext" and c.data.target == "slice_labels"
        _tsne_pool_config(exp, base, work)
        if variant == "real_anatomy":
            seg = _method_config(exp, base, work, "mixed", 0)
            pool = _pretext_config(exp, base, work, "binary")
            assert seg.data.source == pool.data.source == "real_anatomy"
            assert seg.data.real_anatomy.n_cases == 10
            assert seg.data.real_anatomy.host.endswith("ct_template_scct")
            assert pool.data.real_anatomy.host.endswith("ct_head_ge_dicom")
            assert tuple(seg.data.spacing) == tuple(pool.data.spacing) == (1.8, 1.8, 6.0)
    exp = load_config_file("resunet_stroke.py", base)
    for name, spec in exp.models:
        assert _model_config(exp, base, Path("/x"), spec, name, 0).data.source == "real_anatomy"
