"""Label-efficient ICH segmentation, "Mixed" baseline, on Seg-CQ500.

    python -m lesionjax.main --config configs/seg_cq500.py \
        --config.data.raw_dir=/path/to/seg_cq500 [--config.data.test_fold=K]

U-Net 2D (32..512), window [-50, 150] HU scaled to [0, 1], 256x256 slices, batch 32, 40 epochs,
Adam 1e-3 decayed x0.96 per epoch, L2 1e-6, soft Dice loss; all lesion slices plus twice as many
normal slices, normal slices weighted alpha = 0.2; augmentation translate +-10 %, rotate +-15 deg,
scale 0.9-1.1, horizontal flip 50 %; 5 folds at volume level (run test_fold = 0..4).
"""

from lesionjax.config_defaults import check_variant, segmentation_config

RAW_DIR = "data/seg_cq500"


def get_config(arg=None):
    check_variant(arg, ("ich_only",))
    c = segmentation_config()
    c.name = "seg_cq500_mixed"
    c.data.source = "folder"
    c.data.dataset = "seg_cq500"
    c.data.raw_dir = RAW_DIR
    c.data.missing_hint = (
        f"Seg-CQ500 was not found at {RAW_DIR!r}. It cannot be downloaded by lesionjax: get the "
        "CQ500 CT series and the Seg-CQ500 hemorrhage masks under their licences, put them in "
        f"{RAW_DIR}/ (or pass --config.data.raw_dir=/path/to/seg_cq500). To try lesionjax "
        "without any data, run the demo on synthetic head CT: "
        "python -m lesionjax.main --config configs/demo.py"
    )
    c.data.windows = ((-50.0, 150.0),)
    c.data.size = 256
    c.data.n_folds = 5
    c.data.policy = "mixed"
    c.data.normal_ratio = 2.0
    c.data.normal_weight = 0.2
    c.model.name = "unet2d"
    c.model.features = (32, 64, 128, 256, 512)
    c.loss = "dice"
    c.optim.lr = 1e-3
    c.optim.decay_rate = 0.96
    c.optim.weight_decay = 1e-6
    c.train.batch_size = 32
    c.train.epochs = 40
    if arg == "ich_only":  # the "ICH-only" baseline: lesion slices only
        c.name = "seg_cq500_ich_only"
        c.data.policy = "lesion"
    c.lock()
    return c
