"""The pretext tasks of the label-efficient paper, trained on a slice-labelled pool before the
U-Net is fine-tuned on the few labelled volumes (``train.init_from``): context restoration,
global contrastive (SimCLR), local contrastive (Chaitanya et al.), binary and multi-label
classification. ``objectives.build_objective`` turns a config's ``pretext`` section into the
trainer's ``Objective``."""
