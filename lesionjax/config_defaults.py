"""The defaults every 2D segmentation config starts from; files in configs/ override them.

Preprocessing options left unset here (``windows=()``, ``size=0``, ...) take the dataset's
defaults, resolved exactly as ``python -m data_prep.build_shards --dataset NAME`` resolves them
(``data_prep.plan``): CT the ``ich`` window, MRI the ``unit`` window after normalization,
INSTANCE 2022 its three windows; the scan's own size and spacing, every slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from lesionjax.core.errors import ConfigError


def check_variant(arg: str | None, known: Sequence[str]) -> None:
    """Config variants are parsed strictly: ``configs/x.py:typo`` is an error, not the default."""
    if arg not in (None, "") and arg not in known:
        raise ConfigError(f"unknown variant {arg!r} (known: {', '.join(known) or 'none'})")


def segmentation_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "segment2d"
    c.task = "segment2d"
    c.seed = 0
    c.progress = True

    c.data = ml_collections.ConfigDict()
    # "phantom": generate the synthetic set; "folder": read raw_dir; "real_anatomy": generate
    # synthetic lesions in a real scan (data.real_anatomy, set by the configs that use it)
    c.data.source = "phantom"
    c.data.dataset = "pairs"  # layout reader (data_prep.layouts.LAYOUTS)
    c.data.raw_dir = ""  # default for "phantom": <workdir>/phantom
    c.data.shards_dir = ""  # default: <workdir>/shards
    c.data.missing_hint = ""  # printed when raw_dir is absent
    # Names (lesionjax.core.windows.NAMED_WINDOWS) or (lo, hi) pairs; () = the dataset's.
    c.data.windows = ()
    c.data.size = 0  # in-plane size of the shards (0: keep the scan's)
    c.data.spacing = ()  # (x, y, z) mm: resample volumes first (empty: keep the scan's)
    c.data.axial_slices = 0  # > 0: resample each volume along z to this many slices first
    c.data.slice_range = ()  # (lo, hi): keep axial slices lo..hi-1 (empty: all)
    c.data.min_content = 0.0  # keep slices with at least this fraction of tissue voxels
    c.data.normalize = ()  # MRI percentile clipping (lo, hi) (empty: 0.5, 99.5)
    c.data.normalize_method = (
        ""  # MRI: "percentile" | "zscore" (data_prep.intensity); "": the first
    )
    # "lesion": train on the lesion masks; "cavity": on the cases' intracranial-cavity masks
    # (icm/), as the cavity models of configs/cavity.py do.
    c.data.target = "lesion"
    c.data.n_folds = 5
    c.data.fold_seed = 0
    c.data.test_fold = 0
    c.data.val_fold = 1
    c.data.policy = "mixed"  # "all" | "lesion" | "mixed"
    c.data.normal_ratio = 2.0  # mixed: normal slices per lesion slice
    c.data.normal_weight = 0.2  # mixed: loss weight alpha of normal slices
    c.data.prep_workers = 2
    c.data.grain_workers = 0  # host decoding processes (0: threads in this process)
    c.data.allow_skips = False
    c.data.phantom = ml_collections.ConfigDict()
    c.data.phantom.n_cases = 40
    c.data.phantom.seed = 0
    c.data.phantom.shape = (512, 512, 32)
    c.data.phantom.spacing = (0.45, 0.45, 5.0)
    c.data.phantom.lesion_fraction = 0.67
    c.data.phantom.prefix = "phantom"  # case ids <prefix>_000, ...
    # data.source = "real_anatomy": synthetic lesions drawn into a real scan
    # (data_prep.synthetic.real_anatomy): "hemorrhage" in a head CT (a DICOM series folder or the
    # CT template folder), "stroke" in a T1 MRI (the MNI152 folder); spacing () = the host's.
    c.data.real_anatomy = ml_collections.ConfigDict()
    c.data.real_anatomy.kind = "hemorrhage"
    c.data.real_anatomy.host = ""
    c.data.real_anatomy.n_cases = 24
    c.data.real_anatomy.seed = 0
    c.data.real_anatomy.spacing = ()
    c.data.real_anatomy.lesion_fraction = 0.7

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet2d"  # lesionjax.models.registry.MODELS: "unet2d" | "resunet2d"
    c.model.features = (32, 64, 128, 256, 512)
    c.model.out_channels = 1  # binary lesion masks: one sigmoid output
    c.model.dropout = 0.5  # resunet2d only
    # unet2d only (lesionjax.models.layers): "batch" | "instance"; "relu" | "leaky_relu";
    # "maxpool" | "strided". The defaults are the papers' architecture.
    c.model.norm = "batch"
    c.model.activation = "relu"
    c.model.leaky_slope = 0.01  # "leaky_relu"'s negative slope (nnU-Net's; MONAI's BasicUNet: 0.1)
    c.model.downsample = "maxpool"
    c.model.deep_supervision = False  # unet2d: nnU-Net's auxiliary losses at 1/2, 1/4, ...
    c.model.output_prior = 0.0  # > 0: output bias starts at log(p / (1 - p)) (0: zero bias)

    c.loss = "dice"  # "dice" | "bce" | "dice_bce"
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.decay_rate = 0.96  # per epoch
    c.optim.weight_decay = 1e-6  # L2

    c.augment = ml_collections.ConfigDict()
    c.augment.enabled = True
    c.augment.translate = 0.10
    c.augment.rotate_deg = 15.0
    c.augment.scale = (0.9, 1.1)
    c.augment.flip_prob = 0.5
    # Intensity jitter (factor ranges; (1, 1) = off). Off for CT (absolute HU), on for MRI configs.
    c.augment.brightness = (1.0, 1.0)
    c.augment.contrast = (1.0, 1.0)
    c.augment.gamma = (1.0, 1.0)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32
    c.train.epochs = 40
    c.train.max_steps = -1  # > 0: stop earlier
    c.train.log_every = 20
    c.train.checkpoint_every_epochs = 1
    # ... but not again within this many seconds (except at the end and for a new best
    # validation score): saves cost ~0.4 s each on a CPU, too much for epochs of seconds.
    c.train.checkpoint_min_seconds = 60.0
    c.train.precise_bn_batches = 0  # > 0: BN statistics averaged over N batches before val/save
    c.train.val_every_epochs = 1  # validate every N epochs (and after the last)
    c.train.log_data_order = False  # write data_order.jsonl (record indices of every batch)
    # "auto": bf16 on GPUs and TPUs, float32 on the CPU; or "float32" / "bf16". bf16 computes
    # convolutions and activations in bfloat16; parameters, optimizer state, normalization
    # statistics and the loss stay float32.
    c.train.precision = "auto"
    # Transfer: start from another run's weights (lesionjax.train.transfer), matched by path;
    # init_parts "encoder", "encoder+decoder" or "all". "" = a fresh initialisation.
    c.train.init_from = ""
    c.train.init_parts = "all"

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"
    c.eval.threshold = 0.5
    c.eval.batch_size = 32
    c.eval.n_overlays = 4
    # Figures of each run's report (training curves, overlays, box plots); False: numbers only
    # (a large grid of runs, or the tiny test grid, where drawing takes most of a run's time).
    c.eval.figures = True
    # Tolerance (mm) of the normalized surface Dice: INSTANCE 2022's evaluation uses 0.42 mm;
    # a config for other data sets its own (the demo: one 1.8 mm voxel).
    c.eval.nsd_tolerance_mm = 0.42
    # The final evaluation maps each prediction back to the scan's native grid and scores it
    # against the original mask file (physical units there); False: on the shard grid.
    c.eval.native = True
    # Zero predictions outside the intracranial cavity before scoring (native grid): "" none,
    # "dataset" the cases' own icm/ masks, or a cavity run folder (configs/cavity.py).
    c.eval.cavity_mask = ""
    return c


def cascade3d_config() -> ml_collections.ConfigDict:
    """The 3D cascade U-Net's defaults (INSTANCE 2022 paper, built on nnU-Net): the 2D defaults'
    data and evaluation sections, a 3D plan, patches, the 3D U-Net and nnU-Net's augmentation.

    Values left empty (``data.patch``, ``model.features``, ``model.pools``, ``train.batch_size
    = 0``) are taken from the 3D plan of each stage (``plans3d.json``)."""
    c = segmentation_config()
    c.name = "cascade3d"
    c.task = "cascade3d"
    c.data.layout = "3d"
    c.data.windows = ("brain", "subdural", "wide")  # the paper's three windows
    c.data.memory_gb = 8.0  # the plan's accelerator memory budget (nnU-Net: 8 GB)
    c.data.min_lowres_factor = 2.0  # stage 1 at least 2x coarser (nnU-Net may plan none)
    c.data.patch = ()  # final patch (X, Y, Z); (): the plan's
    c.data.fg_fraction = 1.0 / 3.0  # nnU-Net's foreground oversampling
    c.data.n_folds = 6  # folds 0-4: cross-validation; fold 5: the held-out test set
    c.data.test_fold = 5
    c.data.val_fold = -1  # each CV fold validates on its own held-out fold

    c.cascade = ml_collections.ConfigDict()
    c.cascade.stages = ("lowres", "fullres")  # stage 1, then stage 2 (with stage 1's output)
    c.cascade.cv_folds = (0, 1, 2, 3, 4)
    # Folds to train now (() = all), as nnU-Net trains one fold per call; a later stage needs
    # every fold of the one before it (its out-of-fold priors).
    c.cascade.run_folds = ()
    # Epochs per stage, in the order of cascade.stages; (): train.epochs for every stage.
    c.cascade.stage_epochs = ()
    # Patch foreground fraction per stage, in the order of cascade.stages; (): data.fg_fraction.
    c.cascade.stage_fg_fraction = ()
    c.cascade.ensemble_size = 3  # the best folds by out-of-fold Dice, averaged
    c.cascade.evaluate_folds_on_test = True  # each fold model on the test set too (Table 1)
    # Workdirs of other finished cascades whose test rows join this run's table (e.g. the
    # :one_window variant's, for Table 1's "Baseline (1 channel input)").
    c.cascade.compare_runs = ()

    c.model.name = "unet3d"
    c.model.features = ()  # (): the plan's (32 doubling, capped at 320)
    c.model.pools = ()  # (): the plan's per-axis pooling
    c.model.norm = "instance"
    c.model.activation = "leaky_relu"
    c.model.deep_supervision = True
    c.loss = "dice_bce"  # the paper: Dice + BCE
    c.optim.lr = 0.01  # the paper: Adam, lr 0.01
    c.optim.schedule = "poly"  # nnU-Net's (1 - step / total)^0.9
    c.optim.weight_decay = 3e-5  # nnU-Net's
    c.train.batch_size = 0  # 0: the plan's
    c.train.epochs = 1000  # nnU-Net: 1000 epochs of 250 steps
    c.train.steps_per_epoch = 250
    c.train.log_every = 50

    c.augment3d = ml_collections.ConfigDict()
    c.augment3d.enabled = True
    c.augment3d.p_rotate = 0.2
    c.augment3d.rotate_deg = 30.0
    c.augment3d.axial_only = -1  # -1: the plan's rotate_axial_only; 0 / 1: off / on
    c.augment3d.p_scale = 0.2
    c.augment3d.scale = (0.7, 1.4)
    c.augment3d.mirror_axes = (0, 1, 2)
    c.augment3d.p_noise = 0.1
    c.augment3d.noise_variance = 0.1 / 16.0
    c.augment3d.p_brightness = 0.15
    c.augment3d.brightness = (0.75, 1.25)
    c.augment3d.p_contrast = 0.15
    c.augment3d.contrast = (0.75, 1.25)
    c.augment3d.p_gamma = 0.3
    c.augment3d.gamma = (0.7, 1.5)

    c.eval.batch_size = 2  # sliding windows per device batch
    c.eval.window_step = 0.5
    c.eval.mirror_axes = (0, 1, 2)  # TTA of the final evaluation (() for none)
    c.eval.n_overlays = 2
    return c


def pretext_config(task: str, variant: str | None = None) -> ml_collections.ConfigDict:
    """A pretext task's defaults (``lesionjax.tasks.pretext``): the slice-labelled pool of
    ``configs/pretext/pool.py`` (200 synthetic head CTs, 4,800 slices, its own seed) as data,
    the 2D demo's U-Net (so the encoder transfers into its segmentation runs), the paper's
    optimiser (Adam 1e-3 x 0.96 per epoch, L2 1e-6) and batch sizes, a few epochs.

    ``variant``: "tiny" (seconds, for tests) or "paper" (the paper's U-Net and 50 epochs).
    """
    check_variant(variant, ("tiny", "paper"))
    c = segmentation_config()
    c.name = f"pretext_{task}"
    c.task = "pretext"
    c.data.target = "slice_labels"
    c.data.policy = "all"  # every slice of the pool
    c.data.val_fold = -1
    c.data.phantom.n_cases = 200
    c.data.phantom.seed = 1000  # the segmentation sets use seed 0
    c.data.phantom.prefix = "pool"
    c.data.phantom.shape = (128, 128, 24)
    c.data.phantom.spacing = (1.8, 1.8, 6.0)
    c.data.windows = ("brain", "subdural", "wide")  # the demo's
    c.model.features = (8, 16, 32, 64, 128)  # the demo's U-Net
    c.optim.lr = 1e-3
    c.optim.decay_rate = 0.96
    c.optim.weight_decay = 1e-6
    c.train.epochs = 3
    c.train.log_every = 10
    c.eval.n_overlays = 0

    c.pretext = ml_collections.ConfigDict()
    c.pretext.task = task
    c.pretext.loss = "bce"  # multilabel: "bce" (weighted) | "dice"
    c.pretext.head = ()  # (): the paper's (lesionjax.pretext.objectives.DEFAULT_HEADS)
    c.pretext.temperature = 0.1
    c.pretext.swaps = 20  # context restoration: 20 swaps of 20 x 20 patches at 256 x 256
    c.pretext.patch = 20
    c.pretext.reference_size = 256
    c.pretext.decoder_blocks = 3  # local contrastive: partial decoder
    c.pretext.regions = 20  # ... 20 regions of 3 x 3 per feature map
    c.pretext.region_size = 3
    c.pretext.views = ml_collections.ConfigDict()  # the contrastive tasks' strong augmentation
    c.pretext.views.translate = 0.15
    c.pretext.views.rotate_deg = 90.0
    c.pretext.views.scale = (0.8, 1.2)
    c.pretext.views.flip_prob = 0.5  # local contrastive: always 0 (no flips)
    c.pretext.views.crop = (0.6, 1.0)
    c.pretext.views.brightness = (0.8, 1.2)
    c.pretext.views.contrast = (0.8, 1.2)
    c.pretext.views.blur_prob = 0.5
    c.pretext.views.blur_sigma = (0.1, 2.0)
    c.train.batch_size = {
        "context_restoration": 32,
        "global_contrastive": 60,
        "local_contrastive": 24,
    }.get(task, 64)  # the paper's; classification 64
    if task == "local_contrastive":
        c.train.init_parts = "encoder"  # from the global contrastive run (train.init_from)
    if variant == "paper":
        c.model.features = (32, 64, 128, 256, 512)
        c.data.size = 256
        c.train.epochs = 50
    if variant == "tiny":
        c.data.phantom.n_cases = 6
        c.data.phantom.shape = (64, 64, 12)
        c.data.phantom.spacing = (3.6, 3.6, 12.0)
        c.model.features = (8, 16, 32)
        c.pretext.head = {
            "global_contrastive": (32, 16),
            "local_contrastive": (16, 8),
            "binary": (32, 2),
            "multilabel": (32, 7),
        }.get(task, ())
        c.pretext.decoder_blocks = 2
        c.train.batch_size = 8
        c.train.epochs = 1
        c.train.max_steps = 4
        c.train.log_every = 2
    return c
