"""Pretext task: global contrastive (``lesionjax.pretext.objectives``), on the slice-labelled pool.

    python -m lesionjax.main --config configs/pretext/global_contrastive.py \\
        --workdir runs/pretext_global_contrastive

Variants: ``:tiny`` (seconds, for tests), ``:paper`` (the paper's U-Net, 256 x 256, 50 epochs).
"""

from lesionjax.config_defaults import pretext_config


def get_config(arg=None):
    c = pretext_config("global_contrastive", arg)
    c.lock()
    return c
