"""The label-efficient ICH paper's experiment (Table 3, Figures 3-5), CPU-sized.

    python -m lesionjax.experiment --config configs/experiments/label_efficient.py \\
        [--workdir runs/label_efficient] [--config.folds=0,1,2,3,4]

Ten methods x the test folds, each an ordinary run folder under ``<workdir>/runs``: the
supervised baselines (ICH-only, Mixed, each also "+ ICM"), and Mixed fine-tuning started from
each of the five pretext models (context restoration, global and local contrastive, binary and
multi-label CE / Dice classification) trained on the slice-labelled pool. Segmentation: the
2D demo's phantoms and U-Net (``configs/demo.py``), fewer epochs; pretext: the pool of
``configs/pretext/pool.py``; cavity: ``configs/cavity.py`` on phantoms of their own seed.

Variants: ``:tiny`` (the test's grid, seconds per run); ``:real_anatomy``, the label-scarce
regime where the paper found transfer helps most: 10 labelled volumes of synthetic hemorrhages
drawn into the real CT template (5 folds of 2) and a pretext pool of 100 volumes of synthetic
hemorrhages in the real GE head CT, both from ``../shared/data``, resampled to the demo's
1.8 x 1.8 x 6 mm and 128 x 128.
"""

from pathlib import Path

import ml_collections

from lesionjax.config_defaults import check_variant

METHODS = (
    "ich_only", "ich_only_icm", "mixed", "mixed_icm", "context_restoration",
    "global_contrastive", "local_contrastive", "binary", "multilabel_ce", "multilabel_dice",
)  # fmt: skip


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def get_config(arg=None):
    check_variant(arg, ("tiny", "real_anatomy"))
    c = ml_collections.ConfigDict()
    c.name = "label_efficient"
    c.kind = "label_efficient"
    c.config_dir = ""  # "": the folder of this file (set by the runner)
    c.progress = True
    # Jobs at once, each in a worker process once the jobs it needs are done (1: in order, in
    # this process). Workers share this host's devices: for CPU hosts and small models.
    c.workers = 1
    c.methods = METHODS
    c.folds = (0, 1, 2)
    c.segmentation = "../demo.py"
    # BatchNorm + ReLU with precise BN, as the demo had when docs/experiments/label_efficient was
    # measured (the demo has since moved to InstanceNorm + LeakyReLU).
    c.segmentation_overrides = (
        ("train.epochs", 8), ("eval.n_overlays", 2), ("model.norm", "batch"),
        ("model.activation", "relu"), ("train.precise_bn_batches", 8),
    )  # fmt: skip
    c.pretext_dir = "../pretext"
    c.pretext_variant = ""
    # CPU-sized: half the pool (100 volumes, 2,400 slices), 2 epochs per pretext task.
    c.pretext_overrides = (("train.epochs", 2), ("data.phantom.n_cases", 100))
    c.pool = "../pretext/pool.py"
    # The t-SNE figure's validation pool: another seed, no volume of the training pool.
    c.tsne_pool_overrides = (
        ("data.phantom.seed", 3000), ("data.phantom.prefix", "val"), ("data.phantom.n_cases", 20),
    )  # fmt: skip
    c.tsne_slices = 400
    c.cavity = "../cavity.py"
    c.cavity_overrides = (("data.phantom.seed", 2000), ("data.phantom.prefix", "cavity"))
    # Seconds per job on the 2-core CPU (benchmarks/RESULTS.md), for the estimate printed first;
    # once jobs of a kind have run, their measured mean replaces it.
    c.estimate_seconds = ml_collections.ConfigDict(
        {
            "pretext": 160.0,
            "cavity": 450.0,
            "segment": 130.0,
            "icm": 30.0,
            "tsne_pool": 10.0,
            "figure5": 10.0,
        }
    )
    if arg == "real_anatomy":
        c.name = "label_efficient_real_anatomy"
        real = (("data.spacing", (1.8, 1.8, 6.0)), ("data.size", 128),
                ("data.min_content", 0.05), ("data.source", "real_anatomy"),
                ("data.real_anatomy.kind", "hemorrhage"))  # fmt: skip
        c.segmentation_overrides = c.segmentation_overrides + real + (
            ("data.real_anatomy.host", str(SHARED / "ct_template_scct")),
            ("data.real_anatomy.n_cases", 10), ("data.real_anatomy.seed", 21),
            ("data.real_anatomy.lesion_fraction", 0.8),
        )  # fmt: skip
        c.pretext_overrides = (("train.epochs", 2),) + real + (
            ("data.real_anatomy.host", str(SHARED / "ct_head_ge_dicom")),
            ("data.real_anatomy.n_cases", 100), ("data.real_anatomy.seed", 22),
            ("data.real_anatomy.lesion_fraction", 0.67),
        )  # fmt: skip
        c.tsne_pool_overrides = real + (
            ("data.real_anatomy.host", str(SHARED / "ct_head_ge_dicom")),
            ("data.real_anatomy.n_cases", 10), ("data.real_anatomy.seed", 23),
        )  # fmt: skip
    if arg == "tiny":
        c.folds = (0,)
        c.progress = False
        c.segmentation = "../demo.py:tiny"
        c.workers = 2
        # Two-level U-Nets (compiling fast) and no per-run figures: the grid's own outputs
        # are what the test checks, and on the 2-core CPU drawing was half a run's time.
        two_levels = (("model.features", (8, 16)),)
        c.segmentation_overrides = (
            ("train.epochs", 1),
            ("eval.n_overlays", 0),
            ("train.max_steps", 2),
            ("eval.figures", False),
        ) + two_levels
        c.pretext_variant = "tiny"
        c.pretext_overrides = (
            ("train.max_steps", 2),
            ("data.phantom.n_cases", 6),
            ("pretext.decoder_blocks", 1),
        ) + two_levels
        c.pool = "../pretext/pool.py:tiny"
        c.tsne_pool_overrides = (("data.phantom.seed", 3000), ("data.phantom.prefix", "val"),
                                 ("data.phantom.n_cases", 3))  # fmt: skip
        c.tsne_slices = 24
        c.cavity = "../cavity.py:tiny"
        c.cavity_overrides = (("data.phantom.seed", 2000), ("data.phantom.prefix", "cavity"),
                              ("train.max_steps", 2), ("eval.figures", False),
                              *two_levels)  # fmt: skip
        for k in c.estimate_seconds:
            c.estimate_seconds[k] = 5.0
    return c
