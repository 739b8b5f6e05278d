"""Pretext task: binary (``lesionjax.pretext.objectives``), on the slice-labelled pool.

    python -m lesionjax.main --config configs/pretext/binary.py \\
        --workdir runs/pretext_binary

Variants: ``:tiny`` (seconds, for tests), ``:paper`` (the paper's U-Net, 256 x 256, 50 epochs).
"""

from lesionjax.config_defaults import pretext_config


def get_config(arg=None):
    c = pretext_config("binary", arg)
    c.lock()
    return c
