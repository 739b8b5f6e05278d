"""The slice-labelled pretext pool (``lesionjax.tasks.pool``), CPU-sized.

    python -m lesionjax.main --config configs/pretext/pool.py [--workdir runs/pool]

200 synthetic head CTs like the 2D demo's (128 x 128 x 24 at 1.8 x 1.8 x 6 mm, the INSTANCE
2022 windows), 4,800 slices with per-slice labels (any ICH + 5 subtypes) and no masks, their
own seed and case ids (``pool_000`` ...): none of them is a volume of the demo's segmentation
set. ``--config.data.phantom.n_cases=N`` sets the size; the RSNA reader's slices instead:
``--config.data.source=folder --config.data.dataset=rsna --config.data.raw_dir=DIR``.
"""

from lesionjax.config_defaults import check_variant, segmentation_config


def get_config(arg=None):
    check_variant(arg, ("tiny",))
    c = segmentation_config()
    c.name = "pool"
    c.task = "pool"
    c.data.target = "slice_labels"
    c.data.phantom.n_cases = 200
    c.data.phantom.seed = 1000  # the demo's set uses seed 0
    c.data.phantom.prefix = "pool"
    c.data.phantom.shape = (128, 128, 24)
    c.data.phantom.spacing = (1.8, 1.8, 6.0)
    c.data.phantom.lesion_fraction = 0.67
    c.data.windows = ("brain", "subdural", "wide")  # the demo's, so pretext models transfer
    if arg == "tiny":  # seconds, for tests
        c.data.phantom.n_cases = 6
        c.data.phantom.shape = (64, 64, 12)
        c.data.phantom.spacing = (3.6, 3.6, 12.0)
    c.lock()
    return c
