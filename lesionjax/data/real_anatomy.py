"""Synthetic lesions placed into real anatomy: hemorrhages in a real head CT, strokes in real MRI.

The phantom generator (`phantom`, `phantom_lesions`) draws lesions into an analytic head. Here the
same hemorrhage painters draw into a *real* head CT (the GE DICOM series or Rorden's CT template
in `../shared/data`), and chronic stroke lesions are drawn into a real T1 MRI (the MNI152
template): CT / MRI lesion sets whose anatomy, contrast and noise are those of real scans.

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

Per case (seed, index): the host is mirrored left-right (p = 0.5), rotated in-plane (+-8 deg),
scaled in-plane (0.94-1.06 per axis) and warped by a smooth in-plane displacement (~2 mm) about
the head origin, the same in every slice: slices are never resampled across z. Tissue and maps
are resampled bilinearly (label maps by nearest neighbour), the noise by nearest neighbour so it
keeps its amplitude and texture. Lesions are painted on the noise-free tissue
(`phantom_lesions.paint_lesions` on an `Anatomy` built from the real maps); the change is
blurred by the voxel footprint (partial volume, as in the phantom) and added to the host, so a
lesion carries the host's own noise and every other voxel is the host's. A host quieter than
the noise floor (the CT template, an average of many scans, is almost noise-free) gets Gaussian
(CT) or Rician (MR) noise added everywhere to reach it.

MRI strokes are chronic infarcts in vascular territories, placed in MNI-like coordinates (the
host brain's bounding box mapped onto the MNI152 brain's): MCA (a wedge from the insula to the
lateral cortex, whole territory or one division, with or without the deep nuclei), ACA (medial
frontal / parietal strip), PCA (occipital, medial temporal), all supratentorial, and lacunes
(3-15 mm, deep white matter and nuclei). T1: a CSF-like (hypointense) core and a 1-2.5 mm
gliotic rim between CSF and the tissue it replaced. No ex-vacuo enlargement.

Arrays are (X, Y, Z) in RAS+ voxel order, like `data_prep.volumes.Volume`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from data_prep.volumes import CaseError, Volume, load_nifti_ras
from lesionjax.atomic import atomic_write_json
from lesionjax.data.labels import SLICE_LABELS, SUBTYPES
from lesionjax.data.phantom import (
    DEFAULT_SUBTYPE_PROBS,
    PSF_SIGMA_MM,
    PhantomCase,
    save_nifti,
    slice_labels_from_subtypes,
    write_case_nifti,
)
from lesionjax.data.phantom_lesions import Anatomy, paint_lesions, rotation

# --- CT host analysis (HU) ---
BONE_HU = 300.0
SOFT_HU = (-150.0, BONE_HU)
CSF_HU = (-10.0, 15.0)
CALCIFICATION_HU = 90.0
# In-plane spacing (mm) of the grid the CT anatomy is analysed on (sub-millimetre CT is coarsened).
ANALYSIS_MM = 1.0
CLOSING_RADII_MM = (2.0, 6.0, 12.0, 20.0)
# Gaussian sigma (mm) separating tissue from noise: CT, MR.
TISSUE_SMOOTH_MM = (1.0, 0.7)
# Minimum CT noise (HU sigma) of the output: the template is nearly noise-free.
CT_NOISE_HU = 2.5
# --- MRI ---
# MR noise floor as a fraction of the white-matter intensity.
MR_NOISE_FRACTION = 0.015
STROKE_TERRITORIES = ("mca", "aca", "pca", "lacunar")
STROKE_PROBS = {"mca": 0.45, "aca": 0.1, "pca": 0.15, "lacunar": 0.3}
# MNI152 (2009a) brain bounding box (mm): stroke territories are placed relative to it.
MNI_BRAIN_BOX = (np.array([-71.0, -106.0, -71.0]), np.array([71.0, 73.0, 82.0]))
MIN_STROKE_VOXELS = 8
# --- per-case deformation ---
MAX_ROTATION_DEG = 8.0
SCALE_RANGE = (0.94, 1.06)
ELASTIC_MM = 2.0

# Shared data file names.
CT_TEMPLATE_FILE = "scct.nii"
CT_TEMPLATE_MASK_FILE = "scct_stripped.nii"
MNI_T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM_FILE = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI_WM_FILE = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


@dataclasses.dataclass
class RealAnatomyCase(PhantomCase):
    """One scan: a real host with synthetic lesions. Fields as `phantom.PhantomCase`, plus:

    image: float32 (HU for CT, the host's units for MR); mask: uint8 {0, 1} lesion;
    subtypes: uint8, 0 or 1 + index into SUBTYPES (CT) / STROKE_TERRITORIES (MR);
    icm: uint8 intracranial cavity (CT) or brain mask (MR); slice_labels: uint8 (Z, 6) in
    SLICE_LABELS order (CT) or (Z, 5) "any" + STROKE_TERRITORIES (MR).
    modality: "CT" or "MR"; lesions: the lesion types present in `subtypes`; host: float32,
    the deformed host before lesions and added noise; altered: uint8, the voxels the lesions
    changed (lesion, edema, partial-volume fringe); noise_added: sigma of the noise added on
    top of the host's own.
    """

    modality: str = "CT"
    lesions: tuple[str, ...] = ()
    host: np.ndarray | None = None
    altered: np.ndarray | None = None
    noise_added: float = 0.0


# ----------------------------------------------------------------------------- source loading


def cormack_to_hu(c: np.ndarray) -> np.ndarray:
    """Cormack units (Rorden's Clinical toolbox, `clinical_c2h.m`) -> HU.

    The toolbox stores air..-124 HU one to one (c = HU + 1024), stretches -124..+76 HU by 11
    (c = 900 + 11 (HU + 124)), then continues one to one (c = HU + 3024). Its forward
    `clinical_h2c.m` doubles the slope above +76 HU instead; only bone is affected (the 2 mm
    template's blurred skull peaks at ~770 HU here, ~420 HU with that slope), not the brain.
    """
    c = np.asarray(c, np.float32)
    return np.where(
        c <= 900.0, c - 1024.0, np.where(c <= 3100.0, (c - 900.0) / 11.0 - 124.0, c - 3024.0)
    ).astype(np.float32)


def hu_to_cormack(hu: np.ndarray) -> np.ndarray:
    """HU -> Cormack units, the inverse of `cormack_to_hu` (HU below -1024 clamp to 0)."""
    hu = np.maximum(np.asarray(hu, np.float32), -1024.0)
    return np.where(
        hu <= -124.0, hu + 1024.0, np.where(hu <= 76.0, 900.0 + 11.0 * (hu + 124.0), hu + 3024.0)
    ).astype(np.float32)


def load_ct_template(folder: Path) -> tuple[Volume, np.ndarray]:
    """Rorden's CT template (`scct.nii`, Cormack units) as an HU Volume, and its head mask.

    `scct_stripped.nii` is the template with the scalp removed (skull and brain kept); its
    non-zero voxels bound the cavity search.
    """
    folder = Path(folder)
    vol = load_nifti_ras(folder / CT_TEMPLATE_FILE)
    if vol.data.min() < 0:
        raise CaseError(f"{vol.path}: negative values, not Cormack units")
    hu = dataclasses.replace(vol, data=cormack_to_hu(vol.data), modality="CT")
    mask = load_nifti_ras(folder / CT_TEMPLATE_MASK_FILE)
    if mask.data.shape != vol.data.shape:
        raise CaseError(f"{mask.path}: shape {mask.data.shape} != template {vol.data.shape}")
    return hu, mask.data > 0


def load_mni152(folder: Path) -> tuple[Volume, np.ndarray, np.ndarray]:
    """The MNI152 2009a T1 template (modality "MR") and its grey / white maps scaled to 0..1."""
    folder = Path(folder)
    t1 = dataclasses.replace(load_nifti_ras(folder / MNI_T1_FILE), modality="MR")
    maps = []
    for name in (MNI_GM_FILE, MNI_WM_FILE):
        m = load_nifti_ras(folder / name)
        if m.data.shape != t1.data.shape:
            raise CaseError(f"{m.path}: shape {m.data.shape} != T1 {t1.data.shape}")
        top = float(m.data.max())
        if top <= 0:
            raise CaseError(f"{m.path}: empty tissue map")
        maps.append(m.data / np.float32(top if top > 1.0 else 1.0))
    return t1, maps[0], maps[1]


def resample(
    vol: Volume, spacing: Sequence[float], *extra: np.ndarray
) -> tuple[Volume, list[np.ndarray]]:
    """Resamples a Volume (and float maps on its grid) to `spacing` mm, anti-aliased, linear.

    The grid keeps the volume's extent (sizes rounded to whole voxels); the affine is updated so
    world coordinates are preserved.
    """
    shape = np.asarray(vol.data.shape)
    n_out = np.maximum(1, np.rint(shape * np.asarray(vol.spacing) / np.asarray(spacing)))
    scale = shape / n_out  # input voxels per output voxel
    if np.allclose(scale, 1.0):
        return vol, [np.asarray(e, np.float32) for e in extra]
    sigma = 0.5 * np.sqrt(np.maximum(scale**2 - 1.0, 0.0))
    grid = [(np.arange(int(n)) + 0.5) * s - 0.5 for n, s in zip(n_out, scale, strict=True)]

    def one(a):
        a = ndimage.gaussian_filter(np.asarray(a, np.float32), sigma, mode="nearest")
        for axis, g in enumerate(grid):  # separable linear interpolation, one axis at a time
            a = _interp_axis(a, g, axis)
        return a

    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1.0) / 2.0
    out = dataclasses.replace(
        vol,
        data=one(vol.data),
        affine=vol.affine @ step,
        spacing=tuple(float(s) for s in np.asarray(vol.spacing) * scale),
        source_slice=None,
    )
    return out, [one(e) for e in extra]


def _interp_axis(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    lo = np.clip(np.floor(coords).astype(int), 0, a.shape[axis] - 1)
    hi = np.clip(lo + 1, 0, a.shape[axis] - 1)
    f = np.clip(coords - lo, 0.0, 1.0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = -1
    f = f.reshape(shape)
    return np.take(a, lo, axis=axis) * (1.0 - f) + np.take(a, hi, axis=axis) * f


# ----------------------------------------------------------------------------- shared helpers


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


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == sizes.argmax()


def _masked_smooth(image, region, sigma_mm, spacing) -> np.ndarray:
    """Gaussian smoothing using only `region` voxels (normalised convolution); others unchanged.

    Near bone or air only soft-tissue neighbours are averaged, so edges do not leak into it.
    """
    sigma = np.asarray(sigma_mm, float) / np.asarray(spacing, float)
    w = region.astype(np.float32)
    num = ndimage.gaussian_filter(image * w, sigma, mode="nearest")
    den = ndimage.gaussian_filter(w, sigma, mode="nearest")
    out = image.astype(np.float32).copy()
    ok = region & (den > 1e-3)
    out[ok] = num[ok] / den[ok]
    return out


def _noise_sigma(residual: np.ndarray, sigma_mm: float, spacing) -> float:
    """Noise sigma from the residual of a Gaussian smoothing (robust: median absolute deviation).

    Smoothing keeps part of white noise, so the residual's spread is corrected by the kernel:
    var(residual) = sigma^2 (1 - 2 k0 + sum k^2), k the smoothing kernel, k0 its centre weight.
    """
    if residual.size == 0:
        return 0.0
    delta = np.zeros((15, 15, 15), np.float32)
    delta[7, 7, 7] = 1.0
    k = ndimage.gaussian_filter(delta, np.asarray(sigma_mm, float) / np.asarray(spacing, float))
    kept = max(1.0 - 2.0 * float(k[7, 7, 7]) + float((k**2).sum()), 1e-3)
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return 1.4826 * mad / float(np.sqrt(kept))


def _signed_distance(inside: np.ndarray, spacing) -> np.ndarray:
    """mm to the boundary of `inside`, negative inside; zero half a voxel beyond the last voxel."""
    h = 0.5 * float(min(spacing[:2]))
    d_in = ndimage.distance_transform_edt(inside, sampling=spacing)
    d_out = ndimage.distance_transform_edt(~inside, sampling=spacing)
    return np.where(inside, h - d_in, d_out - h).astype(np.float32)


def _world(affine, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World (mm) coordinates of every voxel centre as three broadcastable float32 arrays."""
    g = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    return tuple(
        g[0] * np.float32(affine[r, 0])
        + g[1] * np.float32(affine[r, 1])
        + (g[2] * np.float32(affine[r, 2]) + np.float32(affine[r, 3]))
        for r in range(3)
    )


@dataclasses.dataclass
class _Host:
    """A source analysed once: noise-free tissue + noise residual, and anatomy maps."""

    tissue: np.ndarray  # float32, smoothed within soft tissue (or brain)
    residual: np.ndarray  # float32, host - tissue: the scan's own noise
    maps: dict  # name -> (array, interpolation order, fill value)
    affine: np.ndarray
    spacing: tuple[float, float, float]
    origin: np.ndarray  # world mm, head-frame origin (on the midline)
    noise_sigma: float  # robust sigma of the residual in brain tissue
    background: float  # value outside the field of view
    name: str
    levels: tuple[float, float] = (0.0, 0.0)  # MR: (CSF, white matter) intensity
    box: tuple[np.ndarray, np.ndarray] | None = None  # MR: brain bounding box (world mm)


@dataclasses.dataclass
class _Warp:
    """Per-case in-plane deformation of the host, the same for every axial slice.

    Output voxel (i, j, k) takes the host's value at (rows[i, j], cols[i, j], k); rows / cols
    None is the identity. vox_to_head: output voxel -> head-frame mm (its affine part).
    """

    rows: np.ndarray | None
    cols: np.ndarray | None
    vox_to_head: np.ndarray
    head_per_world: np.ndarray  # (3, 3): a world direction expressed in the head frame

    def apply(self, array: np.ndarray, order: int, cval) -> np.ndarray:
        """Resamples (X, Y, Z) `array`: nearest (order 0) or bilinear (order 1), cval outside.

        Whole z columns are gathered at once, which is much cheaper than 3D map_coordinates.
        """
        if self.rows is None:
            return array.copy()
        padded = np.pad(array, ((1, 1), (1, 1), (0, 0)), constant_values=cval)
        nx, ny = padded.shape[:2]
        r, c = self.rows + 1.0, self.cols + 1.0  # indices into the padded array
        if order == 0:
            i = np.clip(np.rint(r).astype(np.intp), 0, nx - 1)
            j = np.clip(np.rint(c).astype(np.intp), 0, ny - 1)
            return padded[i, j]
        i0 = np.clip(np.floor(r).astype(np.intp), 0, nx - 2)
        j0 = np.clip(np.floor(c).astype(np.intp), 0, ny - 2)
        fr = np.clip(r - i0, 0.0, 1.0).astype(np.float32)[..., None]
        fc = np.clip(c - j0, 0.0, 1.0).astype(np.float32)[..., None]
        out = (padded[i0, j0] * (1 - fr) + padded[i0 + 1, j0] * fr) * (1 - fc)
        out += (padded[i0, j0 + 1] * (1 - fr) + padded[i0 + 1, j0 + 1] * fr) * fc
        return out.astype(array.dtype, copy=False)


def _random_warp(rng, host: _Host, shape, deform: bool) -> _Warp:
    """Mirror (p = 0.5), in-plane rotation and scale about the head origin, smooth warp."""
    sp = np.asarray(host.spacing, float)
    v_o = (np.linalg.inv(host.affine) @ np.append(host.origin, 1.0))[:3]
    a = np.eye(3)
    rows = cols = None
    if deform:
        flip = rng.random() < 0.5
        theta = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
        scale = rng.uniform(*SCALE_RANGE, size=2)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        a[:2, :2] = rot @ np.diag([scale[0] * (-1.0 if flip else 1.0), scale[1]])
        px = ((np.arange(shape[0]) - v_o[0]) * sp[0])[:, None]  # in-plane mm from the origin
        py = ((np.arange(shape[1]) - v_o[1]) * sp[1])[None, :]
        src = [a[r, 0] * px + a[r, 1] * py for r in range(2)]
        # Smooth displacement: three long plane waves (wavelength 80-160 mm) per component.
        for comp in range(2):
            for _ in range(3):
                k = _unit(rng.normal(size=2)) * (2.0 * np.pi / rng.uniform(80.0, 160.0))
                amp = rng.normal(0.0, ELASTIC_MM / np.sqrt(3.0))
                src[comp] = src[comp] + amp * np.cos(k[0] * px + k[1] * py + rng.uniform(0, 6.3))
        rows = (v_o[0] + src[0] / sp[0]).astype(np.float32)
        cols = (v_o[1] + src[1] / sp[1]).astype(np.float32)
    # Head frame = host world - origin, carried along by the deformation's affine part.
    m = host.affine[:3, :3]
    lin = m @ np.diag(1.0 / sp) @ a @ np.diag(sp)
    vox_to_head = np.eye(4)
    vox_to_head[:3, :3] = lin
    vox_to_head[:3, 3] = -lin @ v_o
    return _Warp(rows, cols, vox_to_head, lin @ np.linalg.inv(m))


def _warp_host(host: _Host, warp: _Warp) -> tuple[np.ndarray, np.ndarray, dict]:
    """(tissue, host image, maps) of the deformed host; noise resampled by nearest neighbour."""
    tissue = warp.apply(host.tissue, 1, host.background)
    residual = warp.apply(host.residual, 0, 0.0)
    maps = {k: warp.apply(a, order, cval) for k, (a, order, cval) in host.maps.items()}
    return tissue, tissue + residual, maps


def _blend(host_img, tissue, canvas, inside, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Adds the painted change (canvas - tissue) to the host with partial volume.

    The change is extended outward from the painted voxels (nearest painted value) and weighted
    by the painted region blurred by the voxel footprint (the phantom's partial-volume blur), so
    lesion voxels keep the host's own noise. Only voxels of `inside` change. Returns (image,
    altered mask).
    """
    changed = canvas != tissue
    image = host_img.copy()
    if not changed.any():
        return image, np.zeros(changed.shape, bool)
    sp = np.asarray(spacing, float)
    sigma = np.sqrt(PSF_SIGMA_MM**2 + (sp / 2.355) ** 2) / sp
    pad = np.ceil(3.0 * sigma).astype(int) + 1
    idx = np.argwhere(changed)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, changed.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    ch = changed[box]
    delta = canvas[box] - tissue[box]
    nearest = ndimage.distance_transform_edt(~ch, return_distances=False, return_indices=True)
    delta = delta[tuple(nearest)]
    w = ndimage.gaussian_filter(ch.astype(np.float32), sigma, mode="constant")
    w[w < 1e-3] = 0.0
    w *= inside[box]
    image[box] += w * delta
    altered = np.zeros(changed.shape, bool)
    altered[box] = w > 0
    return image, altered


def _top_up_noise(image, host: _Host, target: float, rng, rician: bool) -> float:
    """Adds noise so the total reaches `target` sigma; returns the sigma added (in place)."""
    extra = float(np.sqrt(max(target**2 - host.noise_sigma**2, 0.0)))
    if extra <= 0.0:
        return 0.0
    n1 = rng.normal(0.0, extra, size=image.shape).astype(np.float32)
    if rician:
        n2 = rng.normal(0.0, extra, size=image.shape).astype(np.float32)
        image[...] = np.sqrt((image + n1) ** 2 + n2**2)
    else:
        image += n1
    return extra


# ----------------------------------------------------------------------------- CT hemorrhages


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
    core = _largest_component(_erode_inplane(cavity, 3.0, spacing))
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
    sdist = _signed_distance(icm, sp)
    depth = -sdist
    csf = icm & (tissue > CSF_HU[0]) & (tissue < CSF_HU[1])
    calc = icm & (tissue > CALCIFICATION_HU)
    world = [np.broadcast_to(w, shape) for w in _world(affine, shape)]
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
            a = _interp_axis(a, coords, axis)
    return a


def _analyse_ct(ct: Volume, brain_hint: np.ndarray | None) -> _Host:
    """Tissue / noise split at full resolution; anatomy maps on a ~1 mm in-plane grid."""
    hu = np.asarray(ct.data, np.float32)
    sp = tuple(float(s) for s in ct.spacing)
    soft = (hu > -100.0) & (hu < 200.0)
    tissue = _masked_smooth(hu, soft, TISSUE_SMOOTH_MM[0], sp)
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
    noise = _noise_sigma((hu - tissue)[parenchyma], TISSUE_SMOOTH_MM[0], sp)
    fills = {"sdist": (1, 50.0), "labels": (0, 0), "sulcal_dist": (0, 1e3)}
    name = Path(ct.path).name.split(".")[0] if ct.path else "ct"
    return _Host(
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


def _anatomy(warp: _Warp, maps: dict, shape) -> Anatomy:
    """A `phantom_lesions.Anatomy` over the deformed host (head frame follows the anatomy)."""
    sdist = maps["sdist"]
    icm = sdist < 0
    vox_to_head = warp.vox_to_head
    xyz = _world(vox_to_head, shape)
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


def _weights(probs: dict[str, float], names: Sequence[str]) -> np.ndarray:
    """Validated relative weights of `names` (unknown names and bad weights raise ValueError)."""
    unknown = set(probs) - set(names)
    if unknown:
        raise ValueError(f"unknown lesion types {sorted(unknown)}; expected {tuple(names)}")
    w = np.array([float(probs.get(s, 0.0)) for s in names])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"lesion probabilities {probs}: weights must be >= 0 with a positive sum")
    return w / w.sum()


def _choose(rng, w: np.ndarray, names: Sequence[str], n_max: int) -> list[str]:
    """1 (70 %) or up to n_max distinct names, as the phantom draws its subtypes."""
    n = min(int(np.count_nonzero(w)), 1 if rng.random() < 0.7 else n_max)
    return [names[i] for i in rng.choice(len(names), size=n, replace=False, p=w)]


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
    w = _weights(probs, SUBTYPES)
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
        warp = _random_warp(rng, host, shape, deform)
        tissue, host_img, maps = _warp_host(host, warp)
        anat = _anatomy(warp, maps, shape)
        names = _choose(rng, w, SUBTYPES, 2) if rng.random() < lesion_fraction else []
        canvas = tissue.copy()
        subtypes = paint_lesions(anat, canvas, names, rng)
        image, altered = _blend(host_img, tissue, canvas, anat.icm, host.spacing)
        added = _top_up_noise(image, host, noise_hu, rng, rician=False)
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


# ----------------------------------------------------------------------------- MRI strokes


def _kmeans_1d(x: np.ndarray, k: int, iters: int = 30) -> np.ndarray:
    centres = np.percentile(x, np.linspace(15, 85, k))
    for _ in range(iters):
        lab = np.argmin(np.abs(x[:, None] - centres[None, :]), axis=1)
        centres = np.array(
            [x[lab == j].mean() if (lab == j).any() else centres[j] for j in range(k)]
        )
    return np.sort(centres)


def _analyse_mri(mri: Volume, grey, white) -> _Host:
    img = np.asarray(mri.data, np.float32)
    sp = tuple(float(s) for s in mri.spacing)
    brain = None
    if grey is None or white is None:
        # No tissue maps (a skull-stripped T1 is assumed): the brain is the filled foreground,
        # grey / white weights come from 3-means on its intensities (CSF < grey < white).
        fg = img > 0.1 * np.percentile(img, 99.0)
        brain = ndimage.binary_fill_holes(_largest_component(ndimage.binary_opening(fg)))
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
        brain = ndimage.binary_fill_holes(_largest_component(closed | parenchyma))
    tissue = _masked_smooth(img, brain, TISSUE_SMOOTH_MM[1], sp)
    sdist = _signed_distance(brain, sp)
    wm = tissue[white > 0.9]
    wm_level = float(np.median(wm)) if wm.size else float(np.percentile(tissue[brain], 90))
    fluid = brain & ((grey + white) < 0.15) & (sdist < -15.0)
    csf_level = float(np.median(tissue[fluid])) if fluid.sum() > 20 else 0.3 * wm_level
    noise = _noise_sigma((img - tissue)[white > 0.9], TISSUE_SMOOTH_MM[1], sp)
    world = _world(mri.affine, img.shape)
    idx = np.nonzero(parenchyma)
    lo = np.array([float(np.broadcast_to(w, img.shape)[idx].min()) for w in world])
    hi = np.array([float(np.broadcast_to(w, img.shape)[idx].max()) for w in world])
    origin = (lo + hi) / 2.0
    maps = {"sdist": (sdist, 1, 50.0), "parenchyma": (parenchyma, 0, False)}
    name = Path(mri.path).name.split(".")[0] if mri.path else "mri"
    return _Host(
        tissue, img - tissue, maps, mri.affine, sp, origin, noise, 0.0, name,
        levels=(csf_level, wm_level), box=(lo, hi),
    )  # fmt: skip


def _smooth_field(rng, shape, spacing, scale_mm=8.0) -> np.ndarray:
    """Unit-variance random field, smooth over ~scale_mm: irregular lesion outlines."""
    f = ndimage.gaussian_filter(
        rng.normal(size=shape).astype(np.float32), scale_mm / np.asarray(spacing)
    )
    return f / (f.std() + 1e-6)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


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
        axis = _unit([s * np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        division = rng.random() < 0.5
        half = rng.uniform(25, 38) if division else rng.uniform(45, 62)
        r_min = 0.0 if rng.random() < 0.5 else rng.uniform(8, 15)
        region = _cone(q, apex, axis, half, r_min, field) & (side > 3.0)
    elif name == "aca":
        apex = np.array([s * 6.0, 12.0, 4.0]) + rng.normal(0, 3.0, 3)
        phi = np.deg2rad(rng.uniform(35, 90))
        axis = _unit([0.0, np.cos(phi), np.sin(phi)])
        half = rng.uniform(22, 38)
        region = _cone(q, apex, axis, half, 8.0, field) & (side > 1.0) & (side < 22.0)
    elif name == "pca":
        apex = np.array([s * 14.0, -30.0, -2.0]) + rng.normal(0, 3.0, 3)
        axis = _unit([s * rng.uniform(0.0, 0.35), -1.0, rng.uniform(-0.35, 0.15)])
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
    return _largest_component(region) if region.any() else region


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
    w = _weights(STROKE_PROBS if territory_probs is None else territory_probs, STROKE_TERRITORIES)
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
        warp = _random_warp(rng, host, shape, deform)
        tissue, host_img, maps = _warp_host(host, warp)
        brain = maps["sdist"] < 0
        parenchyma = brain & maps["parenchyma"]
        # MNI-like coordinates of every output voxel (through the deformation's affine part).
        to_mni = np.eye(4)
        to_mni[:3, :3] = np.diag(1.0 / k)
        to_mni[:3, 3] = mni_centre
        q = tuple(np.broadcast_to(c, shape) for c in _world(to_mni @ warp.vox_to_head, shape))
        names: list[str] = []
        if rng.random() < lesion_fraction:
            names = _choose(rng, w, STROKE_TERRITORIES, 1)
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
        image, altered = _blend(host_img, tissue, canvas, brain, host.spacing)
        added = _top_up_noise(image, host, noise_fraction * wm_level, rng, rician=True)
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


# ----------------------------------------------------------------------------- datasets

KINDS = ("hemorrhage", "stroke")


def load_real_source(source: Path, kind: str) -> tuple[Volume, dict, str]:
    """Reads a host for `kind`: (Volume, keyword arguments for the case generator, case prefix).

    source: the CT template folder (`scct.nii` + `scct_stripped.nii`, Cormack units), a folder
    of one DICOM CT series, the MNI152 folder (T1 + grey / white maps), or a NIfTI file (a CT in
    HU for "hemorrhage", a T1 MRI for "stroke").
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
    source = Path(source)
    if not source.exists():
        raise CaseError(f"{source}: no such file or folder")
    if kind == "hemorrhage":
        if (source / CT_TEMPLATE_FILE).is_file():
            ct, head = load_ct_template(source)
            return ct, {"brain_mask": head}, "scct"
        if source.is_dir():
            from data_prep.dicom import read_dicom_series

            return read_dicom_series(source), {}, source.name
        ct = dataclasses.replace(load_nifti_ras(source), modality="CT")
        return ct, {}, Path(source).name.split(".")[0]
    if (source / MNI_T1_FILE).is_file():
        t1, grey, white = load_mni152(source)
        return t1, {"grey": grey, "white": white}, "mni152"
    if source.is_dir():
        raise CaseError(f"{source}: no {MNI_T1_FILE} in this folder (expected the MNI152 folder)")
    mri = dataclasses.replace(load_nifti_ras(source), modality="MR")
    return mri, {}, Path(source).name.split(".")[0]


def write_case(case: RealAnatomyCase, root: Path) -> None:
    """Writes one case in the pairs layout.

    CT: `phantom.write_case_nifti` (images int16 HU, masks, subtypes, icm). MR: images float32,
    masks, icm (the brain mask) and territories/ (1 + STROKE_TERRITORIES index); MR writes no
    subtypes/ folder, whose values the shard builder reads as hemorrhage subtypes.
    """
    root = Path(root)
    if case.modality == "CT":
        write_case_nifti(case, root)  # type: ignore[arg-type]  # the same fields it reads
        return
    arrays = {
        "images": case.image.astype(np.float32),
        "masks": case.mask.astype(np.uint8),
        "territories": case.subtypes.astype(np.uint8),
        "icm": case.icm.astype(np.uint8),
    }
    for folder, data in arrays.items():
        save_nifti(data, case.affine, root / folder / f"{case.case_id}.nii.gz")


def write_real_anatomy_dataset(
    root: Path,
    kind: str,
    n_cases: int,
    seed: int,
    source: Path,
    *,
    spacing: Sequence[float] | None = None,
    lesion_fraction: float = 0.7,
    probs: dict[str, float] | None = None,
    deform: bool = True,
) -> Path:
    """Generates `n_cases` cases of `kind` ("hemorrhage" or "stroke") on the host `source` and
    writes them like `phantom.generate_dataset`: images/, masks/, subtypes/ (CT) or
    territories/ (MR), icm/, slice_labels.csv and dataset.json (written last: its presence
    marks a complete folder). Returns root.

    probs: subtype (CT) or territory (MR) weights. Re-running with the same arguments on a
    complete folder does nothing; a folder holding a different dataset raises ValueError.
    """
    root = Path(root)
    volume, kwargs, prefix = load_real_source(source, kind)
    meta = {
        "generator": "lesionjax.data.real_anatomy",
        "kind": kind,
        "modality": "CT" if kind == "hemorrhage" else "MR",
        "source": str(Path(source).resolve()),
        "seed": int(seed),
        "n_cases": int(n_cases),
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "lesion_fraction": float(lesion_fraction),
        "probs": None if probs is None else {k: float(v) for k, v in probs.items()},
        "deform": bool(deform),
    }
    meta_path = root / "dataset.json"
    if meta_path.exists():
        existing = json.loads(meta_path.read_text())
        if {k: v for k, v in existing.items() if k != "cases"} != meta:
            raise ValueError(f"{meta_path}: holds a different dataset {existing}; wanted {meta}")
        return root
    root.mkdir(parents=True, exist_ok=True)
    common = dict(lesion_fraction=lesion_fraction, spacing=spacing, deform=deform)
    if kind == "hemorrhage":
        cases = hemorrhage_cases_from_ct(
            volume, n_cases, seed, subtype_probs=probs, case_prefix=prefix, **common, **kwargs
        )
        columns = list(SLICE_LABELS)
    else:
        cases = stroke_cases_from_mri(
            volume, n_cases, seed, territory_probs=probs, case_prefix=prefix, **common, **kwargs
        )
        columns = ["any", *STROKE_TERRITORIES]
    rows, summary = [], []
    for case in cases:
        write_case(case, root)
        rows += [[case.case_id, z, *(int(v) for v in case.slice_labels[z])]
                 for z in range(case.slice_labels.shape[0])]  # fmt: skip
        summary.append(
            {"case_id": case.case_id, "lesions": list(case.lesions),
             "lesion_ml": float(case.mask.sum() * np.prod(case.spacing) / 1000.0)}
        )  # fmt: skip
    tmp = root / f".slice_labels.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "slice", *columns])
        writer.writerows(rows)
    os.replace(tmp, root / "slice_labels.csv")
    atomic_write_json(meta_path, {**meta, "cases": summary})
    return root
