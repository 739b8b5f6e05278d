"""Renders docs/phantom.png: full-resolution synthetic head CTs, one hemorrhage subtype per row.

Usage (from the repository root): python docs/render_phantom_figure.py [--out docs/phantom.png]

Each row is one case generated at the default 512 x 512 x 32 geometry (0.45 x 0.45 x 5 mm): no
hemorrhage, one subtype each, then a case with two. The columns are axial slices from the skull
base to the vertex, always including the slice with the most lesion voxels. Brain window
[0, 80] HU, radiological convention (patient right on the left, anterior up); the lesion outline
is coloured by subtype, the thin dashed line is the ICM.
"""

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from PIL import Image  # noqa: E402

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.synthetic.phantom import generate_case  # noqa: E402
from lesionjax.core.labels import SUBTYPE_ABBREV, SUBTYPES  # noqa: E402

COLOURS = dict(zip(SUBTYPES, ("#ff3030", "#ffa000", "#30d0ff", "#40ff40", "#ff40ff"), strict=True))
ICM_COLOUR = "#ffe066"
# (seed, lesion, subtype forced or None for the default mix); the last seed was picked because
# its default draw gives two subtypes at once.
ROWS = [(100, False, None), (101, True, "epidural"), (102, True, "intraparenchymal"),
        (103, True, "intraventricular"), (104, True, "subarachnoid"), (105, True, "subdural"),
        (117, True, None)]  # fmt: skip
N_COLS = 4
WINDOW_HU = (0.0, 80.0)


def pick_slices(case, n: int) -> list[int]:
    """n slices spread over the brain, replacing the nearest one with the lesion's largest slice."""
    nz = case.image.shape[2]
    icm_area = case.icm.sum(axis=(0, 1))
    brain = np.nonzero(icm_area > 0.3 * icm_area.max())[0]
    picks = np.linspace(brain[0], brain[-1], n).round().astype(int)
    lesion_area = case.mask.sum(axis=(0, 1))
    if lesion_area.any():
        best = int(np.argmax(lesion_area))
        picks[np.argmin(np.abs(picks - best))] = best
    return sorted(set(int(np.clip(k, 0, nz - 1)) for k in picks))


def render(out: Path) -> None:
    fig, axes = plt.subplots(len(ROWS), N_COLS, figsize=(4 * N_COLS, 4.25 * len(ROWS) + 0.8))
    for row, (seed, lesion, subtype) in enumerate(ROWS):
        probs = None if subtype is None else {subtype: 1.0}
        case = generate_case(seed, lesion=lesion, subtype_probs=probs)
        present = [
            SUBTYPE_ABBREV[i] for i in range(len(SUBTYPES)) if (case.subtypes == i + 1).any()
        ]
        slices = pick_slices(case, N_COLS)
        for col in range(N_COLS):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(slices):
                continue
            k = slices[col]
            # Radiological display: flip patient left-right, transpose so anterior is up.
            view = lambda a, k=k: a[::-1, :, k].T  # noqa: E731
            ax.imshow(view(case.image), cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1],
                      origin="lower", interpolation="antialiased")  # fmt: skip
            if case.icm[:, :, k].any():
                ax.contour(view(case.icm), [0.5], colors=ICM_COLOUR, linewidths=0.4,
                           linestyles="dashed", alpha=0.7)  # fmt: skip
            for i, name in enumerate(SUBTYPES):
                m = view(case.subtypes == i + 1)
                if m.any():
                    ax.contour(m.astype(np.uint8), [0.5], colors=COLOURS[name], linewidths=0.9)
            z_mm = case.affine[2, 2] * k + case.affine[2, 3]
            labels = [SUBTYPE_ABBREV[i] for i in range(5) if case.slice_labels[k, i + 1]]
            ax.set_title(
                f"{case.case_id} [{', '.join(present) or 'no hemorrhage'}]\n"
                f"slice {k} (z = {z_mm:+.0f} mm){': ' + ', '.join(labels) if labels else ''}",
                fontsize=9,
            )
    handles = [Line2D([], [], color=COLOURS[n], lw=2, label=f"{a} ({n})")
               for n, a in zip(SUBTYPES, SUBTYPE_ABBREV, strict=True)]  # fmt: skip
    handles.append(Line2D([], [], color=ICM_COLOUR, lw=1, ls="--", label="intracranial cavity"))
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=10, frameon=False)
    fig.suptitle(
        "data_prep.synthetic.phantom: synthetic head CT, 512x512x32 at 0.45x0.45x5 mm, "
        "window [0, 80] HU, radiological view (patient right on the left)",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 0.985))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    # RGB (no alpha) and zlib's best effort keep the committed PNG small.
    Image.open(buf).convert("RGB").save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "phantom.png")
    render(parser.parse_args().out)


if __name__ == "__main__":
    main()
