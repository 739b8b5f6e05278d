"""Synthetic chronic strokes in a real T1 MRI (the MNI152 template, or a skull-stripped T1).

MRI strokes are chronic infarcts in vascular territories, placed in MNI-like coordinates (the
host brain's bounding box mapped onto the MNI152 brain's): MCA (a wedge from the insula to the
lateral cortex, whole territory or one division, with or without the deep nuclei), ACA (medial
frontal / parietal strip), PCA (occipital, medial temporal), all supratentorial, and lacunes
(3-15 mm, deep white matter and nuclei). T1: a CSF-like (hypointense) core and a 1-2.5 mm
gliotic rim between CSF and the tissue it replaced. No ex-vacuo enlargement.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from data_prep.synthetic.host_anatomy import (
    TISSUE_SMOOTH_MM,
    Host,
    RealAnatomyCase,
    blend,
    choose_lesions,
    largest_component,
    lesion_weights,
    masked_smooth,
    noise_sigma,
    random_warp,
    resample,
    signed_distance,
    top_up_noise,
    unit_vector,
    warp_host,
    world_coordinates,
)
from data_prep.synthetic.phantom_lesions import rotation
from data_prep.volumes import CaseError, Volume

# MR noise floor as a fraction of the white-matter intensity.
MR_NOISE_FRACTION = 0.015
STROKE_TERRITORIES = ("mca", "aca", "pca", "lacunar")
STROKE_PROBS = {"mca": 0.45, "aca": 0.1, "pca": 0.15, "lacunar": 0.3}
# MNI152 (2009a) brain bounding box (mm): stroke territories are placed relative to it.
MNI_BRAIN_BOX = (np.array([-71.0, -106.0, -71.0]), np.array([71.0, 73.0, 82.0]))
MIN_STROKE_VOXELS = 8


def _kmeans_1d(x: np.ndarray, k: int, iters: int = 30) -> np.ndarray:
    centres = np.percentile(x, np.linspace(15, 85, k))
    for _ in range(iters):
        lab = np.argmin(np.abs(x[:, None] - centres[None, :]), axis=1)
        centres = np.array(
            [x[lab == j].mean() if (lab == j).any() else centres[j] for j in range(k)]
        )
    return np.sort(centres)


def _analyse_mri(mri: Volume, grey, white) -> Host:
    img = np.asarray(mri.data, np.float32)
    sp = tuple(float(s) for s in mri.spacing)
    brain = None
    if grey is None or white is None:
        # No tissue maps (a skull-stripped T1 is assumed): the brain is the filled foreground,
        # grey / white weights come from 3-means on its intensities (CSF < grey < white).
        fg = img > 0.1 * np.percentile(img, 99.0)
        brain = ndimage.binary_fill_holes(largest_component(ndimage.binary_opening(fg)))
        c = _kmeans_1d(img[brain], 3)
        grey = np.clip(1.0 - np.abs(img - c[1]) / (c[2] - c[1]), 0, 1) * brain
        white = np.clip((img - c[1]) / (c[2] - c[1]), 0, 1) * brain
    grey = np.asarray(grey, np.float32)
    white = np.asarray(white, np.float32)
    parenchyma = (grey + white) > 0.5
    if parenchyma.sum() * np.prod(sp) < 100e3:
        raise CaseError(f"{mri.path}: brain not found in the tissue maps (< 100 mL)")
    if brain is None:  # the maps' brain, with the CSF it encloses (ventricles, sulci)
        closed = ndimage.binary_closing(parenchyma, iterations=3, border_value=0)
        brain = ndimage.binary_fill_holes(largest_component(closed | parenchyma))
    tissue = masked_smooth(img, brain, TISSUE_SMOOTH_MM[1], sp)
    sdist = signed_distance(brain, sp)
    wm = tissue[white > 0.9]
    wm_level = float(np.median(wm)) if wm.size else float(np.percentile(tissue[brain], 90))
    fluid = brain & ((grey + white) < 0.15) & (sdist < -15.0)
    csf_level = float(np.median(tissue[fluid])) if fluid.sum() > 20 else 0.3 * wm_level
    noise = noise_sigma((img - tissue)[white > 0.9], TISSUE_SMOOTH_MM[1], sp)
    world = world_coordinates(mri.affine, img.shape)
    idx = np.nonzero(parenchyma)
    lo = np.array([float(np.broadcast_to(w, img.shape)[idx].min()) for w in world])
    hi = np.array([float(np.broadcast_to(w, img.shape)[idx].max()) for w in world])
    origin = (lo + hi) / 2.0
    maps = {"sdist": (sdist, 1, 50.0), "parenchyma": (parenchyma, 0, False)}
    name = Path(mri.path).name.split(".")[0] if mri.path else "mri"
    return Host(
        tissue, img - tissue, maps, mri.affine, sp, origin, noise, 0.0, name,
        levels=(csf_level, wm_level), box=(lo, hi),
    )  # fmt: skip


def _smooth_field(rng, shape, spacing, scale_mm=8.0) -> np.ndarray:
    """Unit-variance random field, smooth over ~scale_mm: irregular lesion outlines."""
    f = ndimage.gaussian_filter(
        rng.normal(size=shape).astype(np.float32), scale_mm / np.asarray(spacing)
    )
    return f / (f.std() + 1e-6)


def _cone(q, apex, axis, half_angle_deg, r_min, field, roughness=0.15) -> np.ndarray:
    """Voxels whose direction from `apex` is within the (ragged) cone around `axis`."""
    d = [q[i] - np.float32(apex[i]) for i in range(3)]
    r = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + np.float32(1e-3)
    cos = (d[0] * axis[0] + d[1] * axis[1] + d[2] * axis[2]) / r
    ang = np.arccos(np.clip(cos, -1.0, 1.0)) / np.float32(np.deg2rad(half_angle_deg))
    return (ang + np.float32(roughness) * field < 1.0) & (r > r_min)


def _stroke_region(name, rng, q, parenchyma, brain_depth, field) -> np.ndarray:
    """One territory's lesion (bool) in MNI-like coordinates q (three arrays, mm)."""
    s = float(rng.choice([-1.0, 1.0]))  # hemisphere: -1 left, +1 right
    side = s * q[0]
    if name == "mca":
        apex = np.array([s * 30.0, 0.0, 2.0]) + rng.normal(0, 3.0, 3)
        az, el = np.deg2rad(rng.uniform(-25, 25)), np.deg2rad(rng.uniform(0, 35))
        axis = unit_vector([s * np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        division = rng.random() < 0.5
        half = rng.uniform(25, 38) if division else rng.uniform(45, 62)
        r_min = 0.0 if rng.random() < 0.5 else rng.uniform(8, 15)
        region = _cone(q, apex, axis, half, r_min, field) & (side > 3.0)
    elif name == "aca":
        apex = np.array([s * 6.0, 12.0, 4.0]) + rng.normal(0, 3.0, 3)
        phi = np.deg2rad(rng.uniform(35, 90))
        axis = unit_vector([0.0, np.cos(phi), np.sin(phi)])
        half = rng.uniform(22, 38)
        region = _cone(q, apex, axis, half, 8.0, field) & (side > 1.0) & (side < 22.0)
    elif name == "pca":
        apex = np.array([s * 14.0, -30.0, -2.0]) + rng.normal(0, 3.0, 3)
        axis = unit_vector([s * rng.uniform(0.0, 0.35), -1.0, rng.uniform(-0.35, 0.15)])
        half = rng.uniform(22, 38)
        region = _cone(q, apex, axis, half, 8.0, field) & (side > 1.0) & (q[2] < 40.0)
    else:  # lacune: a small ellipsoid in deep white matter or the deep nuclei
        deep = np.argwhere(parenchyma & (brain_depth > 20.0) & (side > 4.0))
        if deep.size == 0:
            return np.zeros(parenchyma.shape, bool)
        centre_vox = deep[rng.integers(len(deep))]
        centre = [float(np.broadcast_to(c, parenchyma.shape)[tuple(centre_vox)]) for c in q]
        semi = rng.uniform(2.0, 7.5) * rng.uniform(0.75, 1.0, size=3)  # 3-15 mm across
        rot = rotation(*rng.uniform(-90, 90, size=3))
        d = [q[i] - np.float32(centre[i]) for i in range(3)]
        rho2 = sum(
            (sum(np.float32(rot[j, i]) * d[j] for j in range(3)) / np.float32(semi[i])) ** 2
            for i in range(3)
        )
        region = rho2 < 1.0
    # Supratentorial only: no cerebellum (low and posterior) or brainstem (low, midline).
    infratentorial = ((q[2] < -10.0) & (q[1] < -38.0)) | (
        (np.abs(q[0]) < 12.0) & (q[2] < -8.0) & (q[1] < -12.0)
    )
    region = region & parenchyma & ~infratentorial
    # Keep the main piece: a clipped cone may leave specks across a sulcus.
    return largest_component(region) if region.any() else region


def _paint_stroke(canvas, region, tissue, csf: float, spacing, rng) -> None:
    """Chronic infarct on T1: CSF-like core, gliotic rim between CSF and the tissue it replaced."""
    inner = ndimage.distance_transform_edt(region, sampling=spacing)
    rim_mm = rng.uniform(1.0, 2.5)
    core = inner > rim_mm
    rim = region & ~core
    g = np.float32(rng.uniform(0.35, 0.65))
    heterogeneity = np.float32(0.03 * abs(csf) + 1e-3)
    canvas[core] = np.float32(csf * rng.uniform(0.95, 1.1)) + rng.normal(
        0, heterogeneity, int(core.sum())
    ).astype(np.float32)
    canvas[rim] = np.float32(csf) + g * (tissue[rim] - np.float32(csf))


def stroke_cases_from_mri(
    mri: Volume,
    n_cases: int,
    seed: int,
    *,
    grey: np.ndarray | None = None,
    white: np.ndarray | None = None,
    lesion_fraction: float = 0.7,
    territory_probs: dict[str, float] | None = None,
    spacing: Sequence[float] | None = None,
    deform: bool = True,
    noise_fraction: float = MR_NOISE_FRACTION,
    case_prefix: str | None = None,
) -> Iterator[RealAnatomyCase]:
    """Yields `n_cases` copies of a real T1 MRI (RAS+) with synthetic chronic stroke lesions.

    grey / white: tissue probability maps on the MRI's grid (0..1); without them the MRI must be
    a skull-stripped T1: the brain is its filled foreground, tissue classes come from 3-means
    on intensity. A lesion case gets one
    territorial infarct (STROKE_TERRITORIES, weights `territory_probs`) and, in 30 % of cases,
    1-2 extra lacunes. subtypes holds 1 + the territory index. noise_fraction: minimum noise
    sigma as a fraction of the white-matter intensity (Rician). Other arguments as
    `hemorrhage_cases_from_ct`.
    """
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ValueError(f"lesion_fraction {lesion_fraction} must be in [0, 1]")
    w = lesion_weights(
        STROKE_PROBS if territory_probs is None else territory_probs, STROKE_TERRITORIES
    )
    if float(mri.data.min()) < -200.0:
        raise CaseError(f"{mri.path}: values down to {mri.data.min():g}: a CT in HU, not an MRI")
    extra = [] if grey is None or white is None else [grey, white]
    for a in extra:
        if np.shape(a) != mri.data.shape:
            raise CaseError(f"{mri.path}: tissue map shape {np.shape(a)} != {mri.data.shape}")
    if spacing is not None:
        mri, extra = resample(mri, spacing, *extra)
    host = _analyse_mri(mri, *(extra if extra else (None, None)))
    wm_level = host.levels[1]
    lo, hi = host.box
    k = (hi - lo) / (MNI_BRAIN_BOX[1] - MNI_BRAIN_BOX[0])
    mni_centre = (MNI_BRAIN_BOX[0] + MNI_BRAIN_BOX[1]) / 2.0
    prefix = case_prefix or host.name
    shape = mri.data.shape
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])
        warp = random_warp(rng, host, shape, deform)
        tissue, host_img, maps = warp_host(host, warp)
        brain = maps["sdist"] < 0
        parenchyma = brain & maps["parenchyma"]
        # MNI-like coordinates of every output voxel (through the deformation's affine part).
        to_mni = np.eye(4)
        to_mni[:3, :3] = np.diag(1.0 / k)
        to_mni[:3, 3] = mni_centre
        q = tuple(
            np.broadcast_to(c, shape) for c in world_coordinates(to_mni @ warp.vox_to_head, shape)
        )
        names: list[str] = []
        if rng.random() < lesion_fraction:
            names = choose_lesions(rng, w, STROKE_TERRITORIES, 1)
            if rng.random() < 0.3:
                names += ["lacunar"] * int(rng.integers(1, 3))
        canvas = tissue.copy()
        subtypes = np.zeros(shape, np.uint8)
        # Its own generator: the field's size depends on the grid, later draws should not.
        field_rng = np.random.default_rng(rng.integers(2**63 - 1))
        field = _smooth_field(field_rng, shape, host.spacing) if names else None
        for name in names:
            for _ in range(5):
                region = _stroke_region(name, rng, q, parenchyma, -maps["sdist"], field)
                if region.sum() >= MIN_STROKE_VOXELS:
                    break
            _paint_stroke(canvas, region, tissue, host.levels[0], host.spacing, rng)
            subtypes[region] = STROKE_TERRITORIES.index(name) + 1
        image, altered = blend(host_img, tissue, canvas, brain, host.spacing)
        added = top_up_noise(image, host, noise_fraction * wm_level, rng, rician=True)
        labels = np.stack([(subtypes == j + 1).any(axis=(0, 1)) for j in range(4)], 1)
        yield RealAnatomyCase(
            image=image.astype(np.float32),
            mask=(subtypes > 0).astype(np.uint8),
            subtypes=subtypes,
            icm=brain.astype(np.uint8),
            slice_labels=np.concatenate([labels.any(1, keepdims=True), labels], 1).astype(np.uint8),
            affine=host.affine.copy(),
            spacing=host.spacing,
            case_id=f"{prefix}_{i:03d}",
            modality="MR",
            lesions=tuple(STROKE_TERRITORIES[j - 1] for j in np.unique(subtypes) if j > 0),
            host=host_img,
            altered=altered.astype(np.uint8),
            noise_added=added,
        )
