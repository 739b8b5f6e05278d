"""Intracranial-cavity models (the label-efficient paper's ICM), on the synthetic head CTs.

    python -m lesionjax.main --config configs/cavity.py [--workdir runs/cavity]
    python -m lesionjax.main --config configs/cavity.py:paper --config.data.source=folder \\
        --config.data.raw_dir=DIR  # any dataset with an icm/ folder, the paper's settings

Two U-Nets 2D trained with Dice loss on the cases' cavity masks (``data.target = "cavity"``),
one on the tissue window [0, 600] HU and one on the bone window [150, 650] HU; their union is
the cavity mask (``lesionjax.tasks.cavity``). The paper: Adam 1e-3 x 0.96 per epoch, L2 1e-6,
50 epochs, batch 20 (tissue) and 16 (bone). The default is CPU-sized: the 2D demo's phantoms
(128 x 128 slices) and a few epochs.
"""

from lesionjax.config_defaults import check_variant, segmentation_config


def get_config(arg=None):
    check_variant(arg, ("tiny", "paper"))
    c = segmentation_config()
    c.name = "cavity"
    c.task = "cavity"
    c.cavity = c.__class__()
    c.cavity.windows = ("tissue", "bone")
    c.cavity.batch_sizes = (20, 16)  # the paper's, per window
    c.data.target = "cavity"
    c.data.policy = "all"  # every slice: the cavity is on most of them
    c.data.phantom.n_cases = 40
    c.data.phantom.shape = (128, 128, 24)
    c.data.phantom.spacing = (1.8, 1.8, 6.0)
    # Every scan resampled to the phantoms' spacing (a no-op for them): a real head CT at
    # 0.5 mm is then seen at the physical scale the models were trained at.
    c.data.spacing = (1.8, 1.8, 6.0)
    c.model.features = (8, 16, 32, 64, 128)
    # CPU-sized: 6 epochs, Adam 3e-3 x 0.88 per epoch, batch Dice: the tissue model's test
    # cavity Dice 0.994 (against 0.927 with the paper's 1e-3 x 0.96, per-sample Dice, 4 epochs;
    # benchmarks/RESULTS.md). The :paper variant has the paper's settings.
    c.loss = "batch_dice"
    c.optim.lr = 3e-3
    c.optim.decay_rate = 0.88
    c.optim.weight_decay = 1e-6
    c.train.epochs = 6
    c.train.precise_bn_batches = 8
    c.eval.nsd_tolerance_mm = 1.8  # one in-plane voxel
    c.eval.n_overlays = 2
    if arg == "paper":
        c.model.features = (32, 64, 128, 256, 512)
        c.loss = "dice"
        c.optim.lr = 1e-3
        c.optim.decay_rate = 0.96
        c.train.epochs = 50
        c.train.precise_bn_batches = 0
    if arg == "tiny":  # seconds, for tests
        c.data.phantom.n_cases = 10
        c.data.phantom.shape = (64, 64, 12)
        c.data.phantom.spacing = (3.6, 3.6, 12.0)
        c.data.spacing = (3.6, 3.6, 12.0)
        c.model.features = (8, 16, 32)
        c.cavity.batch_sizes = (8, 8)
        c.optim.lr = 1e-2
        c.train.epochs = 1
        c.train.precise_bn_batches = 2
    c.lock()
    return c
