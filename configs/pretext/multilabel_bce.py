"""Pretext task: multi-label classification, 7 sigmoid outputs (no ICH, ICH, 5 subtypes),
weighted binary cross-entropy (class weights: negatives / positives in the pool).

    python -m lesionjax.main --config configs/pretext/multilabel_bce.py

Variants: ``:tiny`` (seconds, for tests), ``:paper`` (the paper's U-Net, 256 x 256, 50 epochs).
"""

from lesionjax.config_defaults import pretext_config


def get_config(arg=None):
    c = pretext_config("multilabel", arg)
    c.name = "pretext_multilabel_bce"
    c.pretext.loss = "bce"
    c.lock()
    return c
