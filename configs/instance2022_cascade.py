"""The 3D cascade U-Net for intracranial hemorrhage on CT (INSTANCE 2022 paper), on INSTANCE 2022.

    python -m lesionjax.main --config configs/instance2022_cascade.py[:variant] \
        [--config.data.raw_dir=/path/to/INSTANCE2022] [--workdir runs/instance2022_cascade]

As the paper (built on nnU-Net): the three windows [0, 80], [-20, 180], [-150, 230] HU as
channels; a 3D plan from the dataset's fingerprint (target spacing, patch and batch for 8 GB,
pooling per axis); stage 1 on the low-resolution set and stage 2 on full resolution with stage
1's out-of-fold probabilities as a fourth channel; 3D U-Nets 32..320 with InstanceNorm +
LeakyReLU and deep supervision; Dice + BCE; Adam lr 0.01 (poly decay) for 1000 epochs of 250
steps; nnU-Net's augmentation on the device; 5-fold cross-validation and an ensemble of the 3
best folds; sliding windows (step 0.5, Gaussian weights) with mirroring on every axis.

The paper scored the challenge's 30 validation cases on the challenge platform. Their labels
are not public, so a sixth of the labelled training cases is held out as the test fold
(``data.test_fold = 5``) and the 5 folds run over the rest; the table in ``cascade.md`` is on
that held-out fold.

Variants: ``:one_window`` (the 1-channel ablation: the brain window [0, 80] only), ``:stage1``
(stage 1 alone, the "Stage 1 only" row). Table 1 in one file: run ``:one_window`` first, then
the 3-window cascade with its workdir named (its test rows join ``cascade.md``, labelled
"1 channel (brain)"):

    --config.cascade.compare_runs='("runs/instance2022_cascade_one_window",)'

"""

from lesionjax.config_defaults import cascade3d_config, check_variant

RAW_DIR = "data/INSTANCE2022"


def get_config(arg=None):
    check_variant(arg, ("one_window", "stage1"))
    c = cascade3d_config()
    c.name = "instance2022_cascade"
    c.data.source = "folder"
    c.data.dataset = "instance2022"
    c.data.raw_dir = RAW_DIR
    c.data.missing_hint = (
        f"INSTANCE 2022 was not found at {RAW_DIR!r}. lesionjax cannot download it: register at "
        "instance.grand-challenge.org, get the training set (train_2/data/*.nii.gz and "
        f"train_2/label/*.nii.gz) and put it in {RAW_DIR}/ (or pass "
        "--config.data.raw_dir=/path/to/INSTANCE2022). To try the 3D cascade without any data, "
        "run the demo on synthetic head CT: python -m lesionjax.main --config configs/demo3d.py"
    )
    c.data.windows = ("brain", "subdural", "wide")
    c.eval.nsd_tolerance_mm = 0.42  # INSTANCE's evaluation script
    if arg == "one_window":
        c.name = "instance2022_cascade_one_window"
        c.data.windows = ("brain",)
    if arg == "stage1":
        c.name = "instance2022_cascade_stage1"
        c.cascade.stages = ("lowres",)
    c.lock()
    return c
