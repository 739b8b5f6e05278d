"""A dataset's fingerprint, the input of the 3D plan (nnU-Net's ``DatasetFingerprintExtractor``).

Per case: its RAS spacing (mm) and shape, its lesion voxel count; over the dataset: intensity
statistics of the image inside the lesion masks (mean, std, median, 0.5 / 99.5 percentiles,
min, max: nnU-Net's "foreground intensity properties"), from a seeded sample of at most
``SAMPLES_PER_CASE`` lesion voxels of each case. A case that cannot be read is returned as a
problem ({case_id, file, error}) and left out, as the shard writer does.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import zlib
from collections.abc import Sequence

import numpy as np

from data_prep.layouts.base import CaseFiles
from data_prep.preprocess import load_image
from data_prep.volumes import CaseError, binarize_mask, load_nifti_ras

SAMPLES_PER_CASE = 10_000


def case_fingerprint(files: CaseFiles, seed: int = 0) -> dict:
    """{"case_id", "spacing", "shape", "lesion_voxels", "samples"} of one case (RAS+ grid)."""
    image = load_image(files)
    samples = np.zeros(0, np.float32)
    lesion = 0
    if files.labelled and files.mask is not None:
        mask = binarize_mask(
            load_nifti_ras(files.mask), image, nonzero=files.mask_nonzero, labels=files.mask_labels
        )
        values = image.data[mask.astype(bool)]
        lesion = int(values.size)
        if values.size > SAMPLES_PER_CASE:
            rng = np.random.default_rng([seed, zlib.crc32(files.case_id.encode())])
            values = rng.choice(values, SAMPLES_PER_CASE, replace=False)
        samples = values.astype(np.float32)
    return {
        "case_id": files.case_id,
        "spacing": [float(s) for s in image.spacing],
        "shape": [int(n) for n in image.data.shape],
        "modality": image.modality,
        "lesion_voxels": lesion,
        "samples": samples,
    }


def intensity_statistics(samples: np.ndarray) -> dict | None:
    if samples.size == 0:
        return None
    return {
        "mean": float(samples.mean()),
        "std": float(samples.std()),
        "median": float(np.median(samples)),
        "percentile_00_5": float(np.percentile(samples, 0.5)),
        "percentile_99_5": float(np.percentile(samples, 99.5)),
        "min": float(samples.min()),
        "max": float(samples.max()),
    }


def dataset_fingerprint(
    dataset: str, cases: Sequence[CaseFiles], *, workers: int = 1
) -> tuple[dict, list[dict]]:
    """The fingerprint of ``cases`` (see the module docstring): (fingerprint, problems)."""
    found: list[dict] = []
    problems: list[dict] = []

    def failed(files: CaseFiles, err: BaseException) -> None:
        message = str(err) if isinstance(err, CaseError) else f"{type(err).__name__}: {err}"
        problems.append({"case_id": files.case_id, "file": str(files.image), "error": message})

    if workers <= 1:
        for files in cases:
            try:
                found.append(case_fingerprint(files))
            except Exception as err:  # one bad case must not stop the others
                failed(files, err)
    else:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = {pool.submit(case_fingerprint, f): f for f in cases}
            for future in concurrent.futures.as_completed(futures):
                try:
                    found.append(future.result())
                except Exception as err:
                    failed(futures[future], err)
    found.sort(key=lambda c: c["case_id"])
    samples = [c.pop("samples") for c in found]
    pooled = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    return {
        "dataset": dataset,
        "cases": found,
        "foreground_intensity": intensity_statistics(pooled),
        "median_spacing": np.median([c["spacing"] for c in found], axis=0).tolist()
        if found
        else None,
        "median_shape": np.median([c["shape"] for c in found], axis=0).tolist() if found else None,
    }, problems
