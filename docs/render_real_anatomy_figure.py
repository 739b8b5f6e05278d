"""Renders docs/real_anatomy.png: synthetic lesions placed into real scans, one case per row.

Usage (from the repository root, with ../shared/data present):
    python docs/render_real_anatomy_figure.py [--out docs/real_anatomy.png]

Rows: hemorrhages in Rorden's CT template (2 mm, converted from Cormack units to HU) and in the
GE head CT DICOM series (0.49 x 0.49 mm, tilt removed), chronic strokes in the MNI152 T1
template (1 mm), all at the hosts' native resolution, each case forced to one lesion type. The
columns are axial slices spread over the lesion, including its largest slice. CT: window
[0, 80] HU; MR: [0, 1.1 x white matter]. Radiological view (patient right on the left,
anterior up); the red line is the lesion mask, the dashed line the cavity / brain mask.
"""

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.synthetic import (
    ct_hemorrhage,  # noqa: E402
    mri_stroke,  # noqa: E402
)
from data_prep.synthetic import real_anatomy as ra  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# (source folder, kind, lesion type, seed)
ROWS = [
    ("ct_template_scct", "hemorrhage", "epidural", 1),
    ("ct_template_scct", "hemorrhage", "intraventricular", 2),
    ("ct_head_ge_dicom", "hemorrhage", "intraparenchymal", 3),
    ("ct_head_ge_dicom", "hemorrhage", "subdural", 4),
    ("ct_head_ge_dicom", "hemorrhage", "subarachnoid", 5),
    ("mri_template_mni152", "stroke", "mca", 24),
    ("mri_template_mni152", "stroke", "aca", 7),
    ("mri_template_mni152", "stroke", "pca", 8),
    ("mri_template_mni152", "stroke", "lacunar", 10),
]
N_COLS = 4


def lesion_slices(mask: np.ndarray, n: int) -> list[int]:
    area = mask.sum(axis=(0, 1))
    z = np.nonzero(area)[0]
    picks = np.linspace(z[0], z[-1], n).round().astype(int)
    picks[np.argmin(np.abs(picks - int(np.argmax(area))))] = int(np.argmax(area))
    return sorted(set(picks.tolist()))


def render(out: Path) -> None:
    fig, axes = plt.subplots(len(ROWS), N_COLS, figsize=(3.3 * N_COLS, 3.5 * len(ROWS) + 0.6))
    hosts: dict = {}
    for row, (folder, kind, name, seed) in enumerate(ROWS):
        if folder not in hosts:
            hosts[folder] = ra.load_real_source(SHARED / folder, kind)
        volume, kwargs, prefix = hosts[folder]
        if kind == "hemorrhage":
            gen = ct_hemorrhage.hemorrhage_cases_from_ct(
                volume, 1, seed, subtype_probs={name: 1.0}, lesion_fraction=1.0, **kwargs
            )
        else:
            gen = mri_stroke.stroke_cases_from_mri(
                volume, 1, seed, territory_probs={name: 1.0}, lesion_fraction=1.0, **kwargs
            )
        case = next(gen)
        if case.modality == "CT":
            vmin, vmax = 0.0, 80.0
        else:
            vmin, vmax = 0.0, 1.1 * float(np.percentile(case.host[case.icm > 0], 90))
        ml = case.mask.sum() * np.prod(case.spacing) / 1000.0
        for col, k in enumerate(lesion_slices(case.mask, N_COLS)):
            ax = axes[row, col]
            view = lambda a, k=k: a[::-1, :, k].T  # noqa: E731
            aspect = case.spacing[1] / case.spacing[0]
            ax.imshow(view(case.image), cmap="gray", vmin=vmin, vmax=vmax, origin="lower",
                      aspect=aspect, interpolation="antialiased")  # fmt: skip
            ax.contour(view(case.icm), [0.5], colors="#ffe066", linewidths=0.4,
                       linestyles="dashed", alpha=0.6)  # fmt: skip
            if case.mask[:, :, k].any():
                ax.contour(view(case.mask), [0.5], colors="#ff3030", linewidths=0.7)
            ax.set_title(f"{prefix}: {name} ({ml:.1f} mL)\nslice {k}", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle(
        "data_prep.synthetic.real_anatomy: synthetic hemorrhages in real head CT (window [0, 80]"
        " HU) and chronic strokes in the MNI152 T1; radiological view",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    Image.open(buf).convert("RGB").save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent / "real_anatomy.png"
    parser.add_argument("--out", type=Path, default=default)
    render(parser.parse_args().out)


if __name__ == "__main__":
    main()
