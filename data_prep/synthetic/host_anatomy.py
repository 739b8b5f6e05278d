"""Real scans as hosts for synthetic lesions: loading them, the per-case deformation, blending a
painted lesion into the host with its own noise, and the helpers the CT and MRI painters share.

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

Arrays are (X, Y, Z) in RAS+ voxel order, like ``data_prep.volumes.Volume``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from data_prep.synthetic.phantom import PSF_SIGMA_MM, PhantomCase
from data_prep.volumes import CaseError, Volume, load_nifti_ras

# Gaussian sigma (mm) separating tissue from noise: CT, MR.
TISSUE_SMOOTH_MM = (1.0, 0.7)
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
            a = interp_axis(a, g, axis)
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


def interp_axis(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    lo = np.clip(np.floor(coords).astype(int), 0, a.shape[axis] - 1)
    hi = np.clip(lo + 1, 0, a.shape[axis] - 1)
    f = np.clip(coords - lo, 0.0, 1.0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = -1
    f = f.reshape(shape)
    return np.take(a, lo, axis=axis) * (1.0 - f) + np.take(a, hi, axis=axis) * f


def largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == sizes.argmax()


def masked_smooth(image, region, sigma_mm, spacing) -> np.ndarray:
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


def noise_sigma(residual: np.ndarray, sigma_mm: float, spacing) -> float:
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


def signed_distance(inside: np.ndarray, spacing) -> np.ndarray:
    """mm to the boundary of `inside`, negative inside; zero half a voxel beyond the last voxel."""
    h = 0.5 * float(min(spacing[:2]))
    d_in = ndimage.distance_transform_edt(inside, sampling=spacing)
    d_out = ndimage.distance_transform_edt(~inside, sampling=spacing)
    return np.where(inside, h - d_in, d_out - h).astype(np.float32)


def world_coordinates(affine, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World (mm) coordinates of every voxel centre as three broadcastable float32 arrays."""
    g = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    return tuple(
        g[0] * np.float32(affine[r, 0])
        + g[1] * np.float32(affine[r, 1])
        + (g[2] * np.float32(affine[r, 2]) + np.float32(affine[r, 3]))
        for r in range(3)
    )


@dataclasses.dataclass
class Host:
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
class Warp:
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


def random_warp(rng, host: Host, shape, deform: bool) -> Warp:
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
                k = unit_vector(rng.normal(size=2)) * (2.0 * np.pi / rng.uniform(80.0, 160.0))
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
    return Warp(rows, cols, vox_to_head, lin @ np.linalg.inv(m))


def warp_host(host: Host, warp: Warp) -> tuple[np.ndarray, np.ndarray, dict]:
    """(tissue, host image, maps) of the deformed host; noise resampled by nearest neighbour."""
    tissue = warp.apply(host.tissue, 1, host.background)
    residual = warp.apply(host.residual, 0, 0.0)
    maps = {k: warp.apply(a, order, cval) for k, (a, order, cval) in host.maps.items()}
    return tissue, tissue + residual, maps


def blend(host_img, tissue, canvas, inside, spacing) -> tuple[np.ndarray, np.ndarray]:
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


def top_up_noise(image, host: Host, target: float, rng, rician: bool) -> float:
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


def lesion_weights(probs: dict[str, float], names: Sequence[str]) -> np.ndarray:
    """Validated relative weights of `names` (unknown names and bad weights raise ValueError)."""
    unknown = set(probs) - set(names)
    if unknown:
        raise ValueError(f"unknown lesion types {sorted(unknown)}; expected {tuple(names)}")
    w = np.array([float(probs.get(s, 0.0)) for s in names])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"lesion probabilities {probs}: weights must be >= 0 with a positive sum")
    return w / w.sum()


def choose_lesions(rng, w: np.ndarray, names: Sequence[str], n_max: int) -> list[str]:
    """1 (70 %) or up to n_max distinct names, as the phantom draws its subtypes."""
    n = min(int(np.count_nonzero(w)), 1 if rng.random() < 0.7 else n_max)
    return [names[i] for i in rng.choice(len(names), size=n, replace=False, p=w)]


def unit_vector(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)
