"""Pretext task: local contrastive (``lesionjax.pretext.objectives``), on the slice-labelled pool.

    python -m lesionjax.main --config configs/pretext/local_contrastive.py \\
        --workdir runs/pretext_local_contrastive

It starts from a global contrastive run's encoder (``train.init_from``, init_parts
"encoder"), which stays frozen; the partial decoder and the 1x1 head learn:

    python -m lesionjax.main --config configs/pretext/local_contrastive.py \\
        --workdir runs/pretext_local_contrastive \\
        --config.train.init_from=runs/pretext_global_contrastive

Variants: ``:tiny`` (seconds, for tests), ``:paper`` (the paper's U-Net, 256 x 256, 50 epochs).
"""

from lesionjax.config_defaults import pretext_config


def get_config(arg=None):
    c = pretext_config("local_contrastive", arg)
    c.lock()
    return c
