"""Renders docs/cavity_real_ct.png: a cavity run's models on real head CT, and prints their
cavity Dice on synthetic hemorrhages placed into that real CT.

Usage (from the repository root, with ../shared/data present, after training the models with
``python -m lesionjax.main --config configs/cavity.py --workdir runs/cavity``):

    python docs/render_cavity_figure.py --run runs/cavity [--out docs/cavity_real_ct.png]

Row 1: the GE head CT DICOM series of ../shared/data as it is (no label exists: judge by eye).
Rows 2-3: two cases of synthetic hemorrhages in the same CT (``data_prep.synthetic.
real_anatomy``, warped host, 1 mm), with the generator's own cavity mask (dashed yellow, a
threshold-and-fill construction of the host, not an expert's label) and the models' union
(cyan). Each model reads the scan through its own preprocessing (resampled to its spacing);
the images are shown on that grid, tissue window [0, 600] HU, radiological view. The Dice of
every generated case (default 6) is printed as a table.
"""

import argparse
import dataclasses
import io
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_prep.layouts.base import CaseFiles  # noqa: E402
from data_prep.layouts.pairs import read_pairs_layout  # noqa: E402
from data_prep.preprocess import preprocess_case  # noqa: E402
from data_prep.synthetic.real_anatomy import write_real_anatomy_dataset  # noqa: E402
from lesionjax.cli import prepare_command  # noqa: E402
from lesionjax.core.windows import uint8_to_unit  # noqa: E402
from lesionjax.tasks.cavity_mask import CavityModel  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
N_COLS = 4


def union_on_grid(model: CavityModel, files) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(tissue-window image (X, Y, Z) in [0, 1], union mask, reference cavity or None), all on
    the first model's input grid (the models share the geometry, only the windows differ)."""
    masks, first = [], None
    for m, plan in zip(model.models, model.plans, strict=True):
        labelled = files.icm is not None
        prepared = preprocess_case(
            files, dataclasses.replace(plan, target="cavity") if labelled else plan
        )
        if first is None:
            first = prepared
        elif prepared.channels.shape[:3] != first.channels.shape[:3]:
            raise SystemExit(f"{files.image}: the cavity models read different grids")
        masks.append(m.predictor.predict_volume(m.state, prepared.channels) >= model.threshold)
    image = uint8_to_unit(first.channels[..., 0])
    reference = first.mask > 0 if files.icm is not None else None
    return image, np.logical_or.reduce(masks), reference


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def slices(mask: np.ndarray, n: int) -> list[int]:
    z = np.nonzero(mask.any(axis=(0, 1)))[0]
    return sorted(set(np.linspace(z[0] + 1, z[-1] - 1, n).round().astype(int).tolist()))


def render(run: Path, out: Path, n_cases: int) -> None:
    prepare_command()
    model = CavityModel.load(run)
    raw = CaseFiles(
        case_id="ct_head_ge",
        image=SHARED / "ct_head_ge_dicom",
        mask=None,
        modality="CT",
        labelled=False,
    )
    rows = [("GE head CT (real, as acquired)", *union_on_grid(model, raw))]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_real_anatomy_dataset(
            Path(tmp) / "ge", "hemorrhage", n_cases, 7, SHARED / "ct_head_ge_dicom",
            spacing=(0.98, 0.98, 4.22), lesion_fraction=0.8,
        )  # fmt: skip
        print("| case | cavity Dice (models' union vs the generator's cavity) |")
        print("|---|---:|")
        scores = []
        for k, files in enumerate(read_pairs_layout(root)):
            image, union, reference = union_on_grid(model, files)
            scores.append(dice(union, reference))
            print(f"| {files.case_id} | {scores[-1]:.4f} |")
            if k < 2:
                rows.append((f"{files.case_id}: Dice {scores[-1]:.3f}", image, union, reference))
        print(f"| mean | {np.mean(scores):.4f} |")
    fig, axes = plt.subplots(len(rows), N_COLS, figsize=(3.0 * N_COLS, 3.2 * len(rows) + 0.5))
    for r, (title, image, union, reference) in enumerate(rows):
        shown = reference if reference is not None else union
        for c, k in enumerate(slices(shown, N_COLS)):
            ax = axes[r, c]
            view = lambda a, k=k: a[::-1, :, k].T  # noqa: E731
            ax.imshow(view(image), cmap="gray", vmin=0, vmax=1, origin="lower")
            if reference is not None and reference[:, :, k].any():
                ax.contour(view(reference), [0.5], colors="#ffe066", linewidths=0.8,
                           linestyles="dashed")  # fmt: skip
            if union[:, :, k].any():
                ax.contour(view(union), [0.5], colors="#30e0ff", linewidths=0.8)
            ax.set_title(f"{title}\nslice {k}", fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle(
        f"cavity models of {run.name} (union, cyan) on real head CT; dashed: the synthetic "
        "generator's cavity",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    Image.open(buf).convert("RGB").save(out, optimize=True)
    print(f"figure: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished cavity run folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "cavity_real_ct.png")
    parser.add_argument("--cases", type=int, default=6, help="synthetic cases to score")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: absent (the real head CT lives there)")
    render(args.run, args.out, args.cases)


if __name__ == "__main__":
    main()
