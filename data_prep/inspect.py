"""Look at a scan before training on it: ``python -m data_prep.inspect PATH [--json]``.

PATH is a NIfTI file, a folder holding one DICOM series, or one DICOM file (then its series in
its folder). Prints shape, spacing, orientation (as stored, and ``axcodes`` after reorientation to
RAS), dtype, intensity statistics (HU for CT), for DICOM the series description, gantry tilt and
slice gaps, and for a mask (integer values, few of them) its labels, voxel counts and the lesion
volume in mL. ``--json``: one JSON object as the last line of stdout instead of the text. Exit
code 2, with one line on stderr naming the path, for a missing or unreadable input.

The image is read exactly as the training data preparation reads it (``load_nifti_ras`` or
``read_dicom_series``), so what is shown is what the model will see before windowing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from data_prep.dicom import SeriesInfo, read_dicom_series_with_info
from data_prep.volumes import CaseError, Volume, load_nifti_ras
from lesionjax.core.formats import NIFTI_SUFFIXES

PERCENTILES = (1, 5, 50, 95, 99)
# An image is shown as a mask when its values are integers and there are at most this many.
MAX_MASK_LABELS = 16


def inspect_path(path: Path, *, series_uid: str | None = None) -> dict:
    """The facts about one image as a JSON-ready dict. Raises CaseError for unreadable input."""
    path = Path(path)
    if not path.exists():
        raise CaseError(f"{path}: no such file or folder")
    info: SeriesInfo | None = None
    if path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES):
        volume = load_nifti_ras(path)
        stored_dtype = str(nib.load(str(path)).get_data_dtype())
        kind = "nifti"
    else:
        volume, info = read_dicom_series_with_info(path, series_uid=series_uid)
        stored_dtype = info.stored_dtype
        kind = "dicom"
    facts = {"path": str(path), "format": kind, **_image_facts(volume, stored_dtype)}
    if info is not None:
        facts.update(_series_facts(info))
    else:
        facts["modality"] = "CT" if _looks_like_ct(facts) else None
    mask = _mask_facts(volume)
    facts.update(mask)
    facts["unit"] = (
        "label" if mask["is_mask"] else ("HU" if facts["modality"] == "CT" else "arbitrary")
    )
    return facts


def _image_facts(volume: Volume, stored_dtype: str) -> dict:
    data = volume.data
    pct = np.percentile(data, PERCENTILES)
    return {
        "shape": [int(n) for n in data.shape],
        "spacing": [round(float(s), 6) for s in volume.spacing],
        "source_axcodes": "".join(volume.source_axcodes),
        "axcodes": "".join(nib.aff2axcodes(volume.affine)),
        "affine": np.round(volume.affine, 6).tolist(),
        "dtype": stored_dtype,
        "min": float(data.min()),
        "max": float(data.max()),
        "mean": float(data.mean(dtype=np.float64)),
        "percentiles": {str(p): float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
        "modality": volume.modality,
    }


def _looks_like_ct(facts: dict) -> bool:
    """A NIfTI file does not say its modality; HU images have air near -1000 and bone > 300."""
    p = facts["percentiles"]
    return facts["min"] >= -3100 and p["1"] <= -900 and facts["max"] >= 300


def _series_facts(info: SeriesInfo) -> dict:
    return {
        "modality": info.modality,
        "series_uid": info.series_uid,
        "series_description": info.series_description,
        "manufacturer": info.manufacturer,
        "n_files": len(info.files),
        "tilt_deg": round(info.tilt_deg, 4),
        "gantry_tilt_tag": info.gantry_tilt_tag,
        "slice_gaps_mm": [round(g, 4) for g in info.slice_gaps_mm],
        "stack_gaps_mm": [round(g, 4) for g in info.stack_gaps_mm],
        "resampled": info.resampled,
        "rescale": [list(r) for r in info.rescale],
        "padding_value": info.padding_value,
        "padding_voxels": info.padding_voxels,
    }


def _mask_facts(volume: Volume) -> dict:
    data = volume.data
    not_mask = {"is_mask": False, "labels": None, "lesion_voxels": None, "lesion_ml": None}
    sample = data.reshape(-1)[:: max(1, data.size // 100_000)]
    if len(np.unique(sample)) > MAX_MASK_LABELS or not np.array_equal(sample, np.rint(sample)):
        return not_mask
    if not np.array_equal(data, np.rint(data)):
        return not_mask
    values, counts = np.unique(data, return_counts=True)
    if len(values) > MAX_MASK_LABELS:
        return not_mask
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    lesion_voxels = int(np.count_nonzero(data))
    return {
        "is_mask": True,
        "labels": {f"{v:g}": int(c) for v, c in zip(values, counts, strict=True)},
        "lesion_voxels": lesion_voxels,
        "lesion_ml": lesion_voxels * voxel_ml,
    }


def format_report(facts: dict) -> str:
    """The facts as readable lines."""
    unit = facts["unit"]
    pct = ", ".join(f"p{p} {v:.1f}" for p, v in facts["percentiles"].items())
    lines = [
        f"path:         {facts['path']} ({facts['format']})",
        f"modality:     {facts['modality'] or 'unknown'}",
        f"shape:        {tuple(facts['shape'])}",
        "spacing:      " + " x ".join(f"{s:.4g}" for s in facts["spacing"]) + " mm",
        f"orientation:  stored {facts['source_axcodes']}, axcodes after reorientation"
        f" {facts['axcodes']}",
        f"dtype:        {facts['dtype']} (stored), float32 as read",
        f"intensity:    min {facts['min']:.1f}, max {facts['max']:.1f},"
        f" mean {facts['mean']:.2f} ({unit})",
        f"percentiles:  {pct}",
    ]
    if facts["format"] == "dicom":
        gaps = np.asarray(facts["slice_gaps_mm"])
        gap_text = (
            f"min {gaps.min():.3f}, median {np.median(gaps):.3f}, max {gaps.max():.3f} mm"
            if gaps.size
            else "single slice"
        )
        tag = facts["gantry_tilt_tag"]
        lines += [
            f"series:       {facts['series_description']!r} ({facts['n_files']} files,"
            f" {facts['manufacturer'] or 'unknown maker'}), uid {facts['series_uid']}",
            f"tilt:         {facts['tilt_deg']:.2f} deg from slice positions"
            f" (GantryDetectorTilt {tag if tag is not None else 'absent'})"
            + ("; resampled onto an orthogonal grid" if facts["tilt_deg"] > 0 else ""),
            f"slice gaps:   {gap_text} along the normal"
            + ("; resampled to a regular grid" if facts["resampled"] else ""),
            f"rescale:      {facts['rescale']} (slope, intercept); padding value"
            f" {facts['padding_value']}, {facts['padding_voxels']} padded pixels -> air",
        ]
    if facts["is_mask"]:
        labels = ", ".join(f"{v}: {c}" for v, c in facts["labels"].items())
        lines += [
            f"mask labels:  {labels} (value: voxels)",
            f"lesion:       {facts['lesion_voxels']} voxels, {facts['lesion_ml']:.3f} mL",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit code (0, or 2 for a bad input)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.inspect", description=__doc__)
    parser.add_argument("path", type=Path, help="NIfTI file, DICOM series folder or DICOM file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--series", default=None, help="SeriesInstanceUID in a folder of several")
    args = parser.parse_args(argv)
    try:
        facts = inspect_path(args.path, series_uid=args.series)
    except CaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. permission denied
        print(f"error: {args.path}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(facts))
    else:
        print(format_report(facts))
    return 0


def cli() -> None:
    """The console-script entry point (see pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
