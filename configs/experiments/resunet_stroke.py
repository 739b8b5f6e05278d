"""The residual U-Net paper's comparison: the baseline 2D U-Net against the residual U-Net on
the same split, on the embedded stroke analogue (synthetic chronic strokes in the real MNI152
T1, ``configs/atlas2_resunet.py:mni152``).

    python -m lesionjax.experiment --config configs/experiments/resunet_stroke.py \\
        [--workdir runs/resunet_stroke]

Writes ``results/fold<k>/`` (table of IoU, Dice, precision, recall, ... with Welch tests),
``figure3_overlays_fold<k>.png`` (image, ground truth, U-Net, residual U-Net) and
``figure4_training_fold<k>.png`` (training loss; validation AUC, IoU, precision, recall, Dice).
On ATLAS R2.0 itself: ``--config.models`` naming ``../atlas2_resunet.py`` and its ``:unet``
variant, with ``data.raw_dir`` in ``--config.segmentation_overrides``.

Variants: ``:tiny`` (the test's, seconds per run).
"""

import ml_collections

from lesionjax.config_defaults import check_variant


def get_config(arg=None):
    check_variant(arg, ("tiny",))
    c = ml_collections.ConfigDict()
    c.name = "resunet_stroke"
    c.kind = "model_comparison"
    c.config_dir = ""  # "": the folder of this file (set by the runner)
    c.progress = True
    # Jobs at once, each in a worker process once the jobs it needs are done (1: in order, in
    # this process). Workers share this host's devices: for CPU hosts and small models.
    c.workers = 1
    c.models = (
        ("U-Net", "../atlas2_resunet.py:mni152_unet"),
        ("Residual U-Net", "../atlas2_resunet.py:mni152"),
    )
    c.folds = (0,)
    c.segmentation_overrides = ()
    c.n_overlays = 4
    c.estimate_seconds = ml_collections.ConfigDict({"segment": 600.0})
    if arg == "tiny":
        c.progress = False
        c.segmentation_overrides = (
            ("data.real_anatomy.n_cases", 6), ("data.real_anatomy.spacing", (4.0, 4.0, 4.0)),
            ("data.size", 32), ("model.features", (8, 16, 32)), ("train.epochs", 2),
            ("train.max_steps", 4), ("data.n_folds", 3),
        )  # fmt: skip
        c.n_overlays = 2
        c.estimate_seconds.segment = 10.0
    return c
