"""Pretext task: context restoration (``lesionjax.pretext.objectives``), on the slice-labelled pool.

    python -m lesionjax.main --config configs/pretext/context_restoration.py \\
        --workdir runs/pretext_context_restoration

Variants: ``:tiny`` (seconds, for tests), ``:paper`` (the paper's U-Net, 256 x 256, 50 epochs).
"""

from lesionjax.config_defaults import pretext_config


def get_config(arg=None):
    c = pretext_config("context_restoration", arg)
    c.lock()
    return c
