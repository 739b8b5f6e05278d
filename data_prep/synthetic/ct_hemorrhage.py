"""Synthetic hemorrhages in a real head CT: the host's anatomy (cavity, CSF, ventricles,
cisterns, calcifications) found from its HU values, and the phantom's hemorrhage painters run on it.

CT host analysis (once per source, on a grid coarsened to ~1 mm in-plane for sub-millimetre
scans, then regridded). Tissue = the image smoothed (1 mm) over soft-tissue voxels only; noise =
the rest. The intracranial cavity is what the skull encloses: bone is > 300 HU; in each axial
slice the bone is dilated by r, hole-filled and eroded by r (closing the filled skull bridges
gaps up to 2 r), r growing over 2, 6, 12, 20 mm until a larger r adds < 30 % more interior, so a
closed ring keeps a tight closing and an open one (foramina, or the template's thin temporal
bone blurred below 300 HU) gets a wider one. The interior soft tissue (-150 HU..bone) is then
cleaned in 3D: 3 mm in-plane opening, largest connected component, 3D hole filling (so
calcifications stay inside). With a head mask (the template's scalp-stripped image) the mask
replaces the closing. CSF is -10..15 HU inside the cavity; ventricles are the deep (> 8 mm)
CSF components (> 0.3 mL) near the midline, split into left / right by side and third (midline,
low); cisterns are the other deep CSF spaces near the skull base; > 90 HU inside the cavity is
calcification or bone partial volume (never lesion). The painters' head frame has its origin on
the midline, placed from the ventricles' centroid as in the phantom, axes along the host's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from data_prep.synthetic.host_anatomy import (
    TISSUE_SMOOTH_MM,
    Host,
    RealAnatomyCase,
    Warp,
    blend,
    choose_lesions,
    interp_axis,
    largest_component,
    lesion_weights,
    masked_smooth,
    noise_sigma,
    random_warp,
    resample,
    signed_distance,
    top_up_noise,
    warp_host,
    world_coordinates,
)
from data_prep.synthetic.phantom import DEFAULT_SUBTYPE_PROBS, slice_labels_from_subtypes
from data_prep.synthetic.phantom_lesions import Anatomy, paint_lesions
from data_prep.volumes import CaseError, Volume
from lesionjax.core.labels import SUBTYPES

BONE_HU = 300.0
SOFT_HU = (-150.0, BONE_HU)
CSF_HU = (-10.0, 15.0)
CALCIFICATION_HU = 90.0
# In-plane spacing (mm) of the grid the CT anatomy is analysed on (sub-millimetre CT is coarsened).
ANALYSIS_MM = 1.0
CLOSING_RADII_MM = (2.0, 6.0, 12.0, 20.0)
# Minimum CT noise (HU sigma) of the output: the template is nearly noise-free.
CT_NOISE_HU = 2.5


def _edt2d(mask2d: np.ndarray, spacing) -> np.ndarray:
    if not mask2d.any():
        return np.zeros(mask2d.shape)
    if mask2d.all():
        return np.full(mask2d.shape, np.inf)
    return ndimage.distance_transform_edt(mask2d, sampling=spacing[:2])


def _dilate_inplane(mask: np.ndarray, r_mm: float, spacing) -> np.ndarray:
    """Per axial slice: voxels within r_mm of `mask` (disk dilation through a 2D EDT)."""
    return np.stack([_edt2d(~mask[:, :, k], spacing) <= r_mm for k in range(mask.shape[2])], -1)


def _erode_inplane(mask: np.ndarray, r_mm: float, spacing) -> np.ndarray:
    return np.stack([_edt2d(mask[:, :, k], spacing) > r_mm for k in range(mask.shape[2])], -1)


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(mask[:, :, k]) for k in range(mask.shape[2])], -1)


def _slice_interior(bone2d, soft2d, spacing) -> np.ndarray:
    """Soft tissue enclosed by one axial slice's bone, closing wider gaps only when needed.

    The filled skull (not the bone ring) is closed with growing radii (CLOSING_RADII_MM): a
    radius is kept once the next one adds less than 30 % more interior, so a closed ring keeps
    the tight 2 mm closing and an open one (thin, blurred temporal bone) gets a wider one.
    """
    prev = None
    for r in CLOSING_RADII_MM:
        filled = ndimage.binary_fill_holes(_edt2d(~bone2d, spacing) <= r)
        interior = (_edt2d(filled, spacing) > r) & soft2d
        if prev is not None and prev.any() and prev.sum() >= 0.7 * interior.sum():
            return prev
        prev = interior
    return prev


def _cavity(tissue, hint, spacing) -> np.ndarray:
    """Intracranial cavity from a smoothed HU image (see the module docstring).

    hint: a head mask without scalp (the template's stripped image); when given it replaces
    the skull closing (the blurred template's thin temporal bone is below the bone threshold).
    """
    bone = tissue > BONE_HU
    soft = (tissue > SOFT_HU[0]) & ~bone
    if hint is not None:
        cavity = soft & _fill_slices(hint)
    else:
        cavity = np.zeros(bone.shape, bool)
        for k in range(bone.shape[2]):
            if bone[:, :, k].any():
                cavity[:, :, k] = _slice_interior(bone[:, :, k], soft[:, :, k], spacing)
    # A 3 mm in-plane opening cuts thin bridges to enclosed extracranial tissue (orbits,
    # sinuses), then the largest 3D component is the cavity.
    core = largest_component(_erode_inplane(cavity, 3.0, spacing))
    cavity &= _dilate_inplane(core, 3.0 + 1e-3, spacing)
    return ndimage.binary_fill_holes(cavity)


def _ct_maps(tissue, affine, sp, hint, path) -> tuple[dict, np.ndarray]:
    """Anatomy maps of a smoothed HU image on its own grid, and the head-frame origin (world)."""
    icm = _cavity(tissue, hint, sp)
    if icm.sum() * np.prod(sp) < 100e3:  # < 100 mL: not a head, or the skull was not found
        raise CaseError(
            f"{path}: intracranial cavity not found ({icm.sum() * np.prod(sp) / 1e3:.0f} mL)"
        )
    shape = tissue.shape
    sdist = signed_distance(icm, sp)
    depth = -sdist
    csf = icm & (tissue > CSF_HU[0]) & (tissue < CSF_HU[1])
    calc = icm & (tissue > CALCIFICATION_HU)
    world = [np.broadcast_to(w, shape) for w in world_coordinates(affine, shape)]
    centre = np.array([float(np.mean(w[icm])) for w in world])
    # Ventricles: deep CSF components (> 0.3 mL) near the midline.
    lab, _ = ndimage.label(csf & (depth > 8.0))
    vent = np.zeros(shape, bool)
    voxel_ml = float(np.prod(sp)) / 1000.0
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        comp = lab[sl] == i
        if comp.sum() * voxel_ml >= 0.3 and abs(np.mean(world[0][sl][comp]) - centre[0]) < 30.0:
            vent[sl] |= comp
    if vent.sum() * voxel_ml >= 2.0:
        vc = np.array([float(np.mean(w[vent])) for w in world])
        # The phantom's ventricles sit around (0, -5, 13) mm in its head frame.
        origin = np.array([centre[0], vc[1] + 5.0, vc[2] - 13.0])
    else:
        origin = centre
    hx, hy, hz = (w - np.float32(o) for w, o in zip(world, origin, strict=True))
    ventricles = np.zeros(shape, np.uint8)
    # Left / right lateral ventricles by side; the midline part below their bodies is the third
    # (the phantom's third ventricle spans head z -9..9 mm).
    ventricles[vent & (hx < 0.0)] = 1
    ventricles[vent & (hx >= 0.0)] = 2
    ventricles[vent & (np.abs(hx) <= 2.5) & (hz < 8.0)] = 3
    cisterns = csf & ~vent & (depth > 4.0) & (hz < 5.0) & (np.abs(hx) < 50.0) & (np.abs(hy) < 45.0)
    sulcal = ndimage.distance_transform_edt(~csf, sampling=sp).astype(np.float32)
    # Label maps share one uint8 (one nearest-neighbour resampling per case).
    packed = (
        csf.astype(np.uint8) | (calc.astype(np.uint8) << 1) | (cisterns.astype(np.uint8) << 2)
    ) | (ventricles << 3)
    return {"sdist": sdist, "labels": packed, "sulcal_dist": sulcal}, origin


def _regrid(a: np.ndarray, src_affine, dst_affine, dst_shape, order: int) -> np.ndarray:
    """Resamples `a` between two axis-aligned grids of the same orientation (separably)."""
    rel = np.linalg.inv(src_affine) @ dst_affine
    for axis in range(3):
        coords = rel[axis, axis] * np.arange(dst_shape[axis]) + rel[axis, 3]
        if order == 0:
            idx = np.clip(np.rint(coords).astype(int), 0, a.shape[axis] - 1)
            a = np.take(a, idx, axis=axis)
        else:
            a = interp_axis(a, coords, axis)
    return a


def _analyse_ct(ct: Volume, brain_hint: np.ndarray | None) -> Host:
    """Tissue / noise split at full resolution; anatomy maps on a ~1 mm in-plane grid."""
    hu = np.asarray(ct.data, np.float32)
    sp = tuple(float(s) for s in ct.spacing)
    soft = (hu > -100.0) & (hu < 200.0)
    tissue = masked_smooth(hu, soft, TISSUE_SMOOTH_MM[0], sp)
    factor = max(1, int(ANALYSIS_MM / min(sp[:2]) + 0.25))
    if factor > 1:  # sub-millimetre CT: analyse at ~1 mm (the EDTs dominate), then regrid
        coarse_sp = (sp[0] * factor, sp[1] * factor, sp[2])
        hint = [] if brain_hint is None else [brain_hint.astype(np.float32)]
        coarse, extra = resample(dataclasses.replace(ct, data=tissue), coarse_sp, *hint)
        maps, origin = _ct_maps(
            coarse.data, coarse.affine, coarse.spacing, extra[0] > 0.5 if extra else None, ct.path
        )
        orders = {"sdist": 1, "labels": 0, "sulcal_dist": 0}
        maps = {
            k: _regrid(v, coarse.affine, ct.affine, hu.shape, orders[k]) for k, v in maps.items()
        }
    else:
        maps, origin = _ct_maps(tissue, ct.affine, sp, brain_hint, ct.path)
    icm = maps["sdist"] < 0
    parenchyma = icm & ((maps["labels"] & 3) == 0) & (maps["sdist"] < -3.0)
    noise = noise_sigma((hu - tissue)[parenchyma], TISSUE_SMOOTH_MM[0], sp)
    fills = {"sdist": (1, 50.0), "labels": (0, 0), "sulcal_dist": (0, 1e3)}
    name = Path(ct.path).name.split(".")[0] if ct.path else "ct"
    return Host(
        tissue,
        hu - tissue,
        {k: (v, *fills[k]) for k, v in maps.items()},
        ct.affine,
        sp,
        origin,
        noise,
        -1024.0,
        name,
    )


def _anatomy(warp: Warp, maps: dict, shape) -> Anatomy:
    """A `phantom_lesions.Anatomy` over the deformed host (head frame follows the anatomy)."""
    sdist = maps["sdist"]
    icm = sdist < 0
    vox_to_head = warp.vox_to_head
    xyz = world_coordinates(vox_to_head, shape)
    xyz = tuple(np.broadcast_to(c, shape) for c in xyz)
    head_to_vox = np.linalg.inv(vox_to_head)

    def cavity_distance(pts: np.ndarray) -> np.ndarray:
        vox = head_to_vox[:3, :3] @ np.asarray(pts, float).T + head_to_vox[:3, 3:4]
        return ndimage.map_coordinates(sdist, vox, order=1, mode="constant", cval=50.0)

    labels = maps["labels"]
    csf = ((labels & 1) > 0) & icm
    calc = ((labels & 2) > 0) & icm
    anterior = warp.head_per_world @ np.array([0.0, 1.0, 0.0])
    return Anatomy(
        xyz=xyz,
        vox_to_head=vox_to_head,
        depth=-sdist,
        icm=icm,
        csf=csf,
        sulcal_dist=np.where(icm, maps["sulcal_dist"], np.float32(np.inf)).astype(np.float32),
        ventricles=np.where(icm, labels >> 3, 0).astype(np.uint8),
        cisterns=((labels & 4) > 0) & icm,
        calcification=calc,
        parenchyma=icm & ~csf & ~calc,
        anterior_world=anterior / np.linalg.norm(anterior),
        cavity_distance=cavity_distance,
    )


def _check_ct(ct: Volume) -> None:
    if ct.modality != "CT":
        raise CaseError(f"{ct.path}: modality {ct.modality!r}, expected a CT in HU")
    lo, hi = float(ct.data.min()), float(ct.data.max())
    if lo >= -200.0 or hi - lo < 1000.0:
        raise CaseError(
            f"{ct.path}: values {lo:g}..{hi:g} do not look like HU (air near -1000); "
            "a Cormack-unit template needs load_ct_template"
        )


def hemorrhage_cases_from_ct(
    ct: Volume,
    n_cases: int,
    seed: int,
    *,
    subtype_probs: dict[str, float] | None = None,
    lesion_fraction: float = 0.7,
    brain_mask: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    deform: bool = True,
    noise_hu: float = CT_NOISE_HU,
    case_prefix: str | None = None,
) -> Iterator[RealAnatomyCase]:
    """Yields `n_cases` copies of a real head CT (HU, RAS+) with synthetic hemorrhages.

    Case i depends only on (seed, i): the same seed gives identical cases. A fraction
    `lesion_fraction` of cases get 1 (70 %) or 2 subtypes drawn with `subtype_probs` (default
    `phantom.DEFAULT_SUBTYPE_PROBS`; intraventricular is dropped when no ventricles are found).
    brain_mask: optional head / brain mask bounding the cavity search (the template's stripped
    image). spacing: resample the host first (mm). deform: per-case mirror / rotation / scale /
    warp of the host. noise_hu: minimum output noise sigma (HU), topped up on quiet hosts.
    """
    _check_ct(ct)
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ValueError(f"lesion_fraction {lesion_fraction} must be in [0, 1]")
    probs = dict(DEFAULT_SUBTYPE_PROBS if subtype_probs is None else subtype_probs)
    w = lesion_weights(probs, SUBTYPES)
    hint = None if brain_mask is None else np.asarray(brain_mask, np.float32)
    if hint is not None and hint.shape != ct.data.shape:
        raise CaseError(f"{ct.path}: brain mask shape {hint.shape} != image {ct.data.shape}")
    if spacing is not None:
        ct, extra = resample(ct, spacing, *([] if hint is None else [hint]))
        hint = extra[0] if extra else None
    host = _analyse_ct(ct, None if hint is None else hint > 0.5)
    if (host.maps["labels"][0] >> 3 > 0).sum() * np.prod(host.spacing) < 1000.0:
        # No ventricles found (< 1 mL): intraventricular blood cannot be placed.
        ivh = SUBTYPES.index("intraventricular")
        if w[ivh] == w.sum():
            raise CaseError(f"{ct.path}: no ventricles found for intraventricular hemorrhage")
        w[ivh] = 0.0
        w /= w.sum()
    prefix = case_prefix or host.name
    shape = ct.data.shape
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])
        warp = random_warp(rng, host, shape, deform)
        tissue, host_img, maps = warp_host(host, warp)
        anat = _anatomy(warp, maps, shape)
        names = choose_lesions(rng, w, SUBTYPES, 2) if rng.random() < lesion_fraction else []
        canvas = tissue.copy()
        subtypes = paint_lesions(anat, canvas, names, rng)
        image, altered = blend(host_img, tissue, canvas, anat.icm, host.spacing)
        added = top_up_noise(image, host, noise_hu, rng, rician=False)
        np.clip(image, -1024.0, 3071.0, out=image)
        yield RealAnatomyCase(
            image=image.astype(np.float32),
            mask=(subtypes > 0).astype(np.uint8),
            subtypes=subtypes,
            icm=anat.icm.astype(np.uint8),
            slice_labels=slice_labels_from_subtypes(subtypes),
            affine=host.affine.copy(),
            spacing=host.spacing,
            case_id=f"{prefix}_{i:03d}",
            modality="CT",
            lesions=tuple(SUBTYPES[k - 1] for k in np.unique(subtypes) if k > 0),
            host=host_img,
            altered=altered.astype(np.uint8),
            noise_added=added,
        )
