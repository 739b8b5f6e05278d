"""Hemorrhage subtype names and label values shared by the generator, the shards and the reports.

Subtype maps store 0 for background and ``i + 1`` for ``SUBTYPES[i]`` (the RSNA / CT-ICH order).
Per-slice labels are ``SLICE_LABELS``: "any" first, then the five subtypes.
"""

SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
SUBTYPE_ABBREV = ("EDH", "IPH", "IVH", "SAH", "SDH")
SLICE_LABELS = ("any",) + SUBTYPES
