"""The preprocessing plan: every choice that turns a scan into the model's input, in one place.

A ``PreprocessingPlan`` is built by ``resolve_plan`` from the options a user gave (the
``build_shards`` command line, a training config's ``data`` section: both go through
``plan_options``) over the dataset's defaults, over its modality's defaults. The shard writer
preprocesses every case with it, writes it into ``manifest.json`` (``"plan"``), and a run's
prediction on a new scan reads it back from there (``PreprocessingPlan.from_dict``), so a model
is always fed the way it was trained.

Defaults, by modality (``MODALITY_DEFAULTS``): CT keeps HU and uses the label-efficient paper's
``ich`` window [-50, 150] HU; MRI is normalized (percentile 0.5-99.5 over the foreground) to
[0, 1] and stored through the ``unit`` window. A dataset may override them
(``Layout.plan_defaults``: INSTANCE 2022 uses its three windows). Everything else defaults to
the scan as it is: no resampling, no in-plane resize, every slice kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence

from lesionjax.core import records
from lesionjax.core.errors import ConfigError
from lesionjax.core.windows import parse_windows

MODALITIES = ("CT", "MR")
# What the shards' "mask" holds: the lesion mask, or (intracranial-cavity models) the case's
# cavity mask (its ``icm`` file), so the same 2D pipeline trains and scores either; or
# ("slice_labels", the pretext pool) nothing: the slice labels the masks give, no mask.
TARGETS = ("lesion", "cavity", "slice_labels")
NORMALIZE_METHODS = ("percentile", "zscore")
DEFAULT_PERCENTILES = (0.5, 99.5)
MODALITY_DEFAULTS: dict[str, dict] = {
    "CT": {"windows": ("ich",)},
    "MR": {"windows": ("unit",), "normalize_method": "percentile"},
}
# The plan fields a user may set (config ``data.<field>``, or the build_shards option).
OPTION_FIELDS = (
    "windows",
    "size",
    "spacing",
    "slice_range",
    "min_content",
    "normalize",
    "normalize_method",
    "target",
    "axial_slices",
)


@dataclasses.dataclass(frozen=True)
class PreprocessingPlan:
    """How every case of a dataset becomes shard slices (and a new scan the model's input).

    dataset: the layout name it was made for. modality: "CT" (HU) or "MR" (normalized).
    windows: (lo, hi) intensity windows, one uint8 channel each per input image.
    size: (H, W) in-plane size of the shards, None to keep the scan's.
    spacing: (x, y, z) mm to resample to first, None to keep the scan's.
    slice_range: (lo, hi) axial slices kept (Python slice semantics), None for all.
    min_content: keep slices with at least this fraction of tissue voxels (0: all).
    normalize: MRI percentile clipping (lo, hi). normalize_method: "percentile" | "zscore".
    target: "lesion" (the case's mask), "cavity" (its intracranial-cavity mask as the mask) or
        "slice_labels" (the slice labels its masks give, no mask: ``has_mask`` false).
    axial_slices: resample every volume along z to this many axial slices (the residual U-Net
        paper's 100), after ``spacing`` and before ``slice_range``; None to keep the count.
    """

    dataset: str
    modality: str
    windows: tuple[tuple[float, float], ...]
    size: tuple[int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    slice_range: tuple[int, int] | None = None
    min_content: float = 0.0
    normalize: tuple[float, float] = DEFAULT_PERCENTILES
    normalize_method: str = "percentile"
    target: str = "lesion"
    axial_slices: int | None = None

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ConfigError(f"data.target {self.target!r}: expected one of {TARGETS}")
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality {self.modality!r}: expected one of {MODALITIES}")
        try:
            windows = tuple(parse_windows(self.windows))
        except ValueError as err:
            raise ConfigError(f"data.windows: {err}") from None
        object.__setattr__(self, "windows", windows)
        if self.modality == "MR" and any(lo < 0.0 or hi > 1.0 for lo, hi in windows):
            raise ConfigError(
                f"data.windows: MR images are normalized to [0, 1] but the windows "
                f"{[list(w) for w in windows]} are HU windows (use the 'unit' window)"
            )
        if self.size is not None and not (len(self.size) == 2 and min(self.size) > 0):
            raise ConfigError(f"data.size must be a positive size (H, W), got {self.size}")
        if self.spacing is not None and not (
            len(self.spacing) == 3 and all(v > 0 for v in self.spacing)
        ):
            raise ConfigError(
                f"data.spacing must be three positive numbers (mm), got {self.spacing}"
            )
        if self.slice_range is not None and len(self.slice_range) != 2:
            raise ConfigError(f"data.slice_range must be (lo, hi), got {self.slice_range}")
        if self.axial_slices is not None and not (
            isinstance(self.axial_slices, int) and self.axial_slices > 0
        ):
            raise ConfigError(
                f"data.axial_slices must be a positive count, got {self.axial_slices}"
            )
        norm = self.normalize
        if not (len(norm) == 2 and 0.0 <= norm[0] < norm[1] <= 100.0):
            raise ConfigError(f"data.normalize percentiles must be 0 <= lo < hi <= 100, got {norm}")
        if self.normalize_method not in NORMALIZE_METHODS:
            raise ConfigError(
                f"data.normalize_method {self.normalize_method!r}: expected one of "
                f"{NORMALIZE_METHODS}"
            )
        if not 0.0 <= self.min_content < 1.0:
            raise ConfigError(f"data.min_content must be in [0, 1), got {self.min_content}")

    def to_dict(self) -> dict:
        """JSON-ready (lists for tuples), with the shard schema version it was written for."""
        d = dataclasses.asdict(self)
        d = {k: _lists(v) for k, v in d.items()}
        if d["target"] == "lesion":  # the default is left out: older plans read (and hash) alike
            del d["target"]
        if d["axial_slices"] is None:  # likewise
            del d["axial_slices"]
        d["schema_version"] = records.SCHEMA_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> PreprocessingPlan:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields - {"schema_version"}
        if unknown:
            raise ConfigError(f"preprocessing plan: unknown fields {sorted(unknown)}")
        return cls(**{k: _tuples(v) for k, v in d.items() if k in fields})

    def for_inference(self) -> PreprocessingPlan:
        """The plan as a scan without labels is read for a prediction: what the training masks
        held (a cavity model's ``target``) does not matter there."""
        return self if self.target == "lesion" else dataclasses.replace(self, target="lesion")

    def fingerprint(self) -> str:
        """Changes whenever a shard built with this plan would differ."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _lists(v):
    if isinstance(v, tuple | list):
        return [_lists(x) for x in v]
    return v


def _tuples(v):
    if isinstance(v, list | tuple):
        return tuple(_tuples(x) for x in v)
    return v


def _is_unset(value) -> bool:
    return value is None or value == "" or (isinstance(value, tuple | list) and len(value) == 0)


def plan_options(data) -> dict:
    """The plan fields a config ``data`` section (or any mapping) sets: unset values (None,
    "", ()), a size of 0 (keep the scan's) and a min_content of 0 (keep every slice) are left
    out, so the defaults apply."""
    out = {}
    for field in OPTION_FIELDS:
        if field not in data:
            continue
        value = data[field]
        if _is_unset(value) or (field in ("size", "min_content", "axial_slices") and value == 0):
            continue
        if field == "target" and value == "lesion":  # the default, as if unset
            continue
        out[field] = value
    return out


def dataset_modality(dataset: str, modalities: Sequence[str]) -> str:
    """The one modality of a dataset's cases (the readers set it per case)."""
    found = sorted(set(modalities))
    if not found:
        raise ConfigError(f"dataset {dataset!r}: no cases, so no modality")
    if len(found) > 1:
        raise ConfigError(f"dataset {dataset!r}: cases of several modalities {found}")
    return found[0]


def resolve_plan(
    dataset: str, modality: str, options: Mapping, dataset_defaults: Mapping | None = None
) -> PreprocessingPlan:
    """The plan for ``dataset``: ``options`` (see ``plan_options``) over the dataset's
    ``plan_defaults`` over ``MODALITY_DEFAULTS[modality]``."""
    if modality not in MODALITY_DEFAULTS:
        raise ConfigError(f"dataset {dataset!r}: modality {modality!r} is not CT or MR")
    unknown = set(options) - set(OPTION_FIELDS)
    if unknown:
        raise ConfigError(f"data: unknown preprocessing options {sorted(unknown)}")
    merged: dict = {**MODALITY_DEFAULTS[modality], **(dataset_defaults or {}), **options}
    size = merged.get("size")
    if isinstance(size, int):
        merged["size"] = (size, size)
    return PreprocessingPlan(
        dataset=dataset, modality=modality, **{k: _tuples(v) for k, v in merged.items()}
    )
