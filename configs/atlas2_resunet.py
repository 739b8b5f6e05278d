"""The residual U-Net paper: stroke lesions on T1 MRI, ATLAS R2.0 (BIDS), 2D slices.

    python -m lesionjax.main --config configs/atlas2_resunet.py \\
        --config.data.raw_dir=/path/to/ATLAS_2          # the residual U-Net
    python -m lesionjax.main --config configs/atlas2_resunet.py:unet ...   # the baseline U-Net

As the paper: each T1 volume resampled to 100 axial slices, slices 70-90 kept, intensity
normalisation, augmentation by flip, rotation and zoom, a 60/20/20 split by subject (5 folds:
fold 0 test, fold 1 validation, the other three training). The residual U-Net's encoder blocks
are conv3x3 stride 2 -> conv3x3 -> BN -> ReLU with a strided 1x1 projection shortcut, then BN
and Dropout(0.5) (``lesionjax.models.resunet2d``); ``:unet`` is the baseline 2D U-Net. Slices
are resized in-plane to 224 x 224 (ATLAS's MNI-space volumes are 197 x 233).

ATLAS cannot be shipped. ``:mni152`` and ``:mni152_unet`` are the embedded analogue: synthetic
chronic strokes drawn into the real MNI152 T1 of ``../shared/data/mri_template_mni152``
(``data.source = "real_anatomy"``, 24 volumes at 2 mm), every slice with brain kept (the
generator's strokes lie in vascular territories over the whole brain, so slices 70-90 of 100
would hold only a part of them), 96 x 96, 3 folds.
"""

from pathlib import Path

from lesionjax.config_defaults import check_variant, segmentation_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNI152 = str(SHARED / "mri_template_mni152")


def get_config(arg=None):
    check_variant(arg, ("unet", "mni152", "mni152_unet"))
    c = segmentation_config()
    c.name = "atlas2_resunet"
    c.data.source = "folder"
    c.data.dataset = "atlas2"
    c.data.raw_dir = "data/atlas2"
    c.data.missing_hint = (
        "ATLAS R2.0 was not found at 'data/atlas2' (it cannot be shipped: request it from the "
        "ATLAS authors, then pass --config.data.raw_dir=/path/to/ATLAS_2), or run the embedded "
        "analogue: python -m lesionjax.main --config configs/atlas2_resunet.py:mni152"
    )
    c.data.windows = ("unit",)
    c.data.normalize_method = "zscore"  # intensity normalisation over the brain
    c.data.axial_slices = 100
    c.data.slice_range = (70, 90)
    c.data.size = 224
    c.data.n_folds = 5  # 60 / 20 / 20 by subject
    c.data.test_fold = 0
    c.data.val_fold = 1
    c.data.policy = "all"
    c.model.name = "resunet2d"
    c.model.features = (32, 64, 128, 256, 512)
    c.model.dropout = 0.5
    c.augment.translate = 0.0  # flip, rotation and zoom
    c.augment.rotate_deg = 15.0
    c.augment.scale = (0.9, 1.1)
    c.augment.flip_prob = 0.5
    c.loss = "dice"
    c.train.batch_size = 16
    c.train.epochs = 40
    c.eval.nsd_tolerance_mm = 1.0
    if arg in ("mni152", "mni152_unet"):
        c.name = "stroke_mni152_resunet"
        c.data.source = "real_anatomy"
        c.data.dataset = "pairs"
        c.data.raw_dir = ""  # <workdir>/phantom
        c.data.real_anatomy.kind = "stroke"
        c.data.real_anatomy.host = MNI152
        c.data.real_anatomy.n_cases = 24
        c.data.real_anatomy.seed = 11
        c.data.real_anatomy.spacing = (2.0, 2.0, 2.0)
        c.data.real_anatomy.lesion_fraction = 0.8
        c.data.missing_hint = (
            "the analogue draws strokes into the MNI152 T1 template (mri_template_mni152 in "
            "../shared/data next to a development checkout); point "
            "--config.data.real_anatomy.host at that folder"
        )
        c.data.axial_slices = 0
        c.data.slice_range = ()
        c.data.min_content = 0.05
        c.data.size = 96
        c.data.n_folds = 3
        c.model.features = (16, 32, 64, 128, 256)
        c.loss = "batch_dice"
        c.optim.lr = 3e-3
        c.optim.decay_rate = 0.9
        c.train.epochs = 12
        c.eval.nsd_tolerance_mm = 2.0
    if arg in ("unet", "mni152_unet"):
        c.name = c.name.replace("resunet", "unet")
        c.model.name = "unet2d"
    c.lock()
    return c
