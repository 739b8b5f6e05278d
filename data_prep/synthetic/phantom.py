"""Synthetic head CT with intracranial hemorrhages, deterministic from a seed.

The head is built analytically in physical units (see `phantom_lesions` for the head frame), then
sampled on the voxel grid through the case affine and a random pose, so the anatomy is the same at
any resolution: `generate_case(s)` (512 x 512 x 32 at 0.45 x 0.45 x 5 mm, like clinical head CT)
and `generate_case(s, shape=(128, 128, 24), spacing=(1.8, 1.8, 6.0))` show the same head.

Tissues (HU): air -1000; skin +40..+55 over subcutaneous fat ~-100 and galea / temporalis muscle;
skull with cortical tables +900..+1400 around diploe +350..+650, thickness varying around the
head; grey matter +37..+44, white matter +23..+29; CSF +2..+9 in ventricles, cisterns, a thin
layer under the inner table and in cortical folds; choroid plexus and pineal calcifications
+100..+400 (never lesions); orbits and paranasal sinuses in the lowest slices. Hemorrhages come
from `phantom_lesions`. Then partial-volume blur (Gaussian, per-axis sigma in mm, thickest in the
slice direction) and 4-6 HU Gaussian noise.

Arrays are (X, Y, Z) voxel grids in RAS+ order; world coordinates in mm (`phantom_affine`).

One file for one head model: the exterior, skull, skull base and brain painters share the head
frame and its random parameters (``_sample_head``), and the dataset writer below them is a thin
loop over ``generate_case``; the lesions live in ``phantom_lesions``.
"""

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from data_prep.synthetic.phantom_lesions import Anatomy, ellipsoid_rho, paint_lesions, rotation
from lesionjax.core.atomic import atomic_path, atomic_write_csv, atomic_write_text
from lesionjax.core.labels import SLICE_LABELS, SUBTYPES

DEFAULT_SHAPE = (512, 512, 32)
DEFAULT_SPACING = (0.45, 0.45, 5.0)
# Relative frequency of subtypes among lesion cases (IPH and SDH are the common ones).
DEFAULT_SUBTYPE_PROBS = {
    "epidural": 0.10,
    "intraparenchymal": 0.30,
    "intraventricular": 0.15,
    "subarachnoid": 0.17,
    "subdural": 0.28,
}
# The slab centre sits this far above the world origin (the nominal cavity centre), because the
# cranium reaches higher above its centre (vertex) than below it (skull base).
SLAB_CENTRE_Z_MM = 10.0
# Scanner point-spread function (sigma, mm) before the voxel's own footprint is added.
PSF_SIGMA_MM = 0.4


@dataclass
class PhantomCase:
    """One synthetic scan. Arrays are (X, Y, Z) in RAS+ voxel order (see `phantom_affine`).

    image: float32 HU; mask: uint8 {0, 1} lesion; subtypes: uint8 0 or 1 + SUBTYPES index;
    icm: uint8 {0, 1} intracranial cavity (inside the inner table); slice_labels: uint8 (Z, 6) in
    SLICE_LABELS order; affine: (4, 4) float64 voxel -> world mm; spacing: (3,) mm.
    """

    image: np.ndarray
    mask: np.ndarray
    subtypes: np.ndarray
    icm: np.ndarray
    slice_labels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    case_id: str


def phantom_affine(shape, spacing) -> np.ndarray:
    """(4, 4) RAS+ affine: axis 0 left->right, 1 posterior->anterior, 2 inferior->superior.

    World origin is at the in-plane centre of the field of view and SLAB_CENTRE_Z_MM below the
    slab centre, i.e. at the centre of an un-posed head.
    """
    shape, spacing = np.asarray(shape, float), np.asarray(spacing, float)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(shape - 1.0) / 2.0 * spacing
    affine[2, 3] += SLAB_CENTRE_Z_MM
    return affine


def _sample_head(rng: np.random.Generator) -> dict:
    """Random head shape, pose and tissue densities (mm, degrees, HU) as Python floats."""

    def u(lo, hi):
        return float(rng.uniform(lo, hi))

    atrophy = u(0.0, 1.0)  # older brains: wider sulci, thicker CSF layer, larger ventricles
    return dict(
        ax=u(64, 71), ay=u(80, 87), az_up=u(60, 67), floor_mid=u(40, 44), floor_step=u(14, 17),
        skull=u(4.5, 7.0), skull_waves=rng.normal(size=(3, 4)).tolist(), scalp=u(5.0, 7.0),
        temporalis=u(4.0, 9.0), fat=u(0.8, 2.0),
        yaw=u(-10, 10), pitch=u(-6, 6), roll=u(-3, 3), shift=[u(-12, 12), u(-8, 8), u(-5, 5)],
        csf_layer=0.5 + 1.2 * atrophy, sulcus_width=0.4 + 0.5 * atrophy,
        ventricle_scale=0.85 + 0.6 * atrophy + u(-0.1, 0.1),
        sulcus_depth=u(11, 17), cortex=u(2.2, 3.0), fold_wavelength=u(16, 21),
        gm=u(37, 44), wm=u(23, 29), csf=u(2, 9), bone=u(900, 1400), diploe=u(350, 650),
        skin=u(40, 55), fat_hu=u(-110, -85), muscle=u(38, 48), noise=u(4.0, 6.0),
        choroid=u(100, 300) if rng.random() < 0.8 else None,
        pineal=u(120, 400) if rng.random() < 0.7 else None,
    )  # fmt: skip


def _cavity_field(x, y, z, p, floor_scale=1.0):
    """Signed distance (mm, negative inside) to the inner table, and normalised radius r.

    Above its centre the cavity is an egg-shaped ellipsoid (narrower frontally). Below it is a
    quartic superellipsoid: flat-bottomed like the cranial fossae, with the floor stepping from the
    high anterior fossa to the deep posterior fossa, and dipping laterally for the middle fossae.
    The distance is first order, (r - 1) / |grad r|: exact on a sphere and within a few percent
    in the ~2 cm shell on either side of the table, the only place the layers (scalp, bone, CSF,
    cortex) need it. floor_scale > 1 lowers the floor, turning the cavity into the outline of
    the whole head (face, neck).
    x, y, z: head-frame mm, any broadcastable shapes.
    """
    ax = p["ax"] * (1.0 - 0.08 * np.clip(y / p["ay"], -1.0, 1.0))
    floor = p["floor_mid"] - p["floor_step"] * np.clip((y - 10.0) / 30.0, -1.0, 1.0)
    # The middle fossae hold the temporal lobes: deepest laterally, just behind the orbits.
    floor = floor + 12.0 * (x / p["ax"]) ** 2 * np.exp(-(((y - 15.0) / 22.0) ** 2))
    above = z > 0
    az = np.where(above, np.float32(p["az_up"]), floor * floor_scale)
    qx, qy, qz = x / ax, y / p["ay"], np.abs(z) / az
    qz2 = qz * qz
    g = np.where(above, qz2, qz2 * qz2)  # z-term of r^2: quadratic above, quartic below
    r = np.sqrt(qx * qx + qy * qy + g)
    dg = np.where(above, qz, 2.0 * qz2 * qz) / az  # half the z-derivative of g
    grad = np.sqrt((qx / ax) ** 2 + (qy / p["ay"]) ** 2 + dg * dg) / (r + np.float32(1e-6))
    return (r - 1.0) / (grad + np.float32(1e-6)), r


def _head_coordinates(shape, affine, p):
    """Head-frame mm of every voxel: three float32 (X, Y, Z) arrays, voxel->head (4, 4), pose."""
    rot = rotation(p["yaw"], p["pitch"], p["roll"])
    world_to_head = np.eye(4)
    world_to_head[:3, :3] = rot.T
    world_to_head[:3, 3] = -rot.T @ np.asarray(p["shift"])
    m = world_to_head @ affine
    grids = np.meshgrid(
        *[np.arange(n, dtype=np.float32) for n in shape], indexing="ij", sparse=True
    )
    xyz = tuple(
        grids[0] * np.float32(m[r, 0]) + grids[1] * np.float32(m[r, 1])
        + (grids[2] * np.float32(m[r, 2]) + np.float32(m[r, 3]))
        for r in range(3)
    )  # fmt: skip
    return xyz, m, rot


def _paint_exterior(hu, xyz, d_cav, d_env, p):
    """Scalp (skin, fat, galea / temporalis) and skull, painted outside the cavity, in place.

    Returns the soft-tissue mask (muscle-density voxels), where face structures may be drawn.
    """
    reach = 1.8 * p["skull"] + p["scalp"] + p["temporalis"] + 2.0
    idx = np.nonzero((d_cav >= 0) & (d_env < reach))
    x, y, z = (c[idx] for c in xyz)
    r = np.sqrt(x * x + y * y + z * z) + np.float32(1e-3)
    ux, uy, uz = x / r, y / r, z / r
    # Thin temporal squama, thick occiput and skull base, a few random undulations per head.
    undulation = sum(
        np.float32(0.08 * w[3]) * np.cos(np.float32(2.5) * (w[0] * ux + w[1] * uy + w[2] * uz))
        for w in p["skull_waves"]
    )
    temporal = np.exp(-((uz + 0.1) ** 2) / 0.08) * ux * ux
    skull = p["skull"] * (
        1.0 - 0.45 * temporal - 0.25 * np.minimum(uy, 0.0) + 0.3 * np.maximum(-uz - 0.4, 0.0)
        + undulation
    )  # fmt: skip
    skull = np.maximum(skull, 2.0)
    below_skin = d_env[idx] - skull - (p["scalp"] + p["temporalis"] * temporal)
    vals = np.full(x.shape, -1000.0, np.float32)
    vals[below_skin < 0] = p["muscle"]
    subcutaneous = below_skin < -1.8 - p["fat"]
    vals[~subcutaneous & (below_skin < -1.8)] = p["fat_hu"]
    vals[(below_skin < 0) & (below_skin >= -1.8)] = p["skin"]
    d = d_cav[idx]
    table = np.clip(0.3 * skull, 1.0, 2.2)
    bone = (d < skull) & subcutaneous
    vals[bone] = np.where((d[bone] < table[bone]) | (d[bone] > skull[bone] - table[bone]),
                          np.float32(p["bone"]), np.float32(p["diploe"]))  # fmt: skip
    hu[idx] = vals
    soft = np.zeros(hu.shape, bool)
    soft[idx] = vals == np.float32(p["muscle"])
    return soft


def _paint_skull_base(hu, anat, soft, p):
    """Petrous ridges, clivus, orbits and paranasal sinuses: what the lowest slices cut through.

    The petrous ridges and the clivus rise from the cavity floor, splitting it into the middle
    and posterior fossae, so they are removed from `anat.icm`. Orbits (globe, lens, fat cone) and
    sinuses are drawn only on soft tissue, leaving skull and cavity untouched. In place.
    """
    ax, ay, front = p["ax"], p["ay"], p["floor_mid"] - p["floor_step"]
    ridges = [((s * 0.56 * ax, -10, -p["floor_mid"] - 4), (6, 30, 14), rotation(-s * 53))
              for s in (-1.0, 1.0)]  # fmt: skip
    ridges.append(((0, 2, -p["floor_mid"] - 8), (9, 8, 16), rotation(0, 30)))  # clivus
    for centre, semi, rot in ridges:
        box, rho, _ = ellipsoid_rho(anat, centre, semi, rot)
        base = (rho < 1.0) & anat.icm[box]
        hu[box][base] = p["bone"]
        anat.icm[box] &= ~base
    air = [((0, 0.45 * ay, -front - 20), (12, 10, 9)),  # sphenoid
           ((0, 0.8 * ay, -front - 15), (8, 14, 9)),  # ethmoid
           ((-0.42 * ax, 0.72 * ay, -front - 42), (14, 16, 13)),  # maxillary
           ((0.42 * ax, 0.72 * ay, -front - 42), (14, 16, 13))]  # fmt: skip
    for centre, semi in air:
        box, rho, _ = ellipsoid_rho(anat, centre, semi)
        region = soft[box]
        hu[box][region & (rho < 1.08)] = p["diploe"]  # thin bony wall
        hu[box][region & (rho < 1.0)] = -950.0
    for s in (-1.0, 1.0):
        globe = (s * 0.45 * ax, 0.9 * ay, -front - 14)
        cone = (s * 0.38 * ax, 0.72 * ay, -front - 12)
        box, rho, _ = ellipsoid_rho(anat, cone, (13, 17, 12), rotation(s * 18))
        hu[box][soft[box] & (rho < 1.0)] = p["fat_hu"]
        box, rho, _ = ellipsoid_rho(anat, globe, (11.5, 11.5, 11.5))
        hu[box][soft[box] & (rho < 1.0)] = 12.0
        box, rho, _ = ellipsoid_rho(anat, (globe[0], globe[1] + 9, globe[2]), (4.5, 2, 4.5))
        hu[box][soft[box] & (rho < 1.0)] = 95.0


def _fold_distance(xyz, r_cav, band, p, rng):
    """Distance (mm) to the mid-plane of a cortical fold and the fold's depth, inside `band`.

    Folds are the zero set of a random band-limited field (a sum of plane waves) evaluated on the
    point's radial projection onto the inner table: a gyral labyrinth on the surface, extruded
    inwards as sheets, so axial slices show sulci running in from the surface. |f| / rms|grad f|
    approximates the distance to the zero set without a gradient pass. Returns flat arrays over
    the voxels of `band` (C order): distance and the local fold depth (mm).
    """
    k = 2.0 * np.pi / p["fold_wavelength"]
    n_waves = 8
    dirs = rng.normal(size=(n_waves + 1, 3))
    dirs = (k * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, n_waves + 1).astype(np.float32)
    idx = np.nonzero(band)
    inv_r = 1.0 / r_cav[idx]
    pts = [c[idx] * inv_r for c in xyz]
    f = np.zeros(inv_r.shape, np.float32)
    for d, ph in zip(dirs[:-1], phases[:-1], strict=True):
        f += np.cos(d[0] * pts[0] + d[1] * pts[1] + d[2] * pts[2] + ph)
    # Only the two tangential components of a wave vector vary along the surface: 2/3 of k^2.
    dist = np.abs(f) / np.float32(k * np.sqrt(n_waves / 2.0 * 2.0 / 3.0))
    d, ph = dirs[-1], phases[-1]
    depth = p["sulcus_depth"] * (
        0.7 + 0.3 * np.cos(d[0] * pts[0] + d[1] * pts[1] + d[2] * pts[2] + ph)
    )
    return dist, depth


def _ventricle_parts(p):
    """(label, centre, semi-axes, yaw, pitch) of the ventricular system, head-frame mm."""
    v = p["ventricle_scale"]
    parts = []
    for label, s in ((1, -1.0), (2, 1.0)):  # label 1 = left (x < 0), 2 = right
        parts += [
            (label, (s * 9, 17, 10), (4.5 * v, 13, 7 * v), s * 22, -10),  # frontal horn
            (label, (s * 11, -8, 17), (4.5 * v, 18, 5.5 * v), s * -6, 0),  # body
            (label, (s * 19, -28, 10), (6.5 * v, 9, 8 * v), 0, 0),  # atrium
            (label, (s * 17, -43, 7), (3.5 * v, 11, 4.5 * v), s * 18, 0),  # occipital horn
            (label, (s * 29, -10, -12), (1.8 * v, 12, 2.5 * v), s * 10, 20),  # temporal horn
        ]
    parts += [(3, (0, -4, 0), (1.5 * v, 13, 9), 0, -10), (4, (0, -36, -33), (6, 3.5, 6), 0, 0)]
    return parts


def _paint_brain(hu, anat, r_cav, p, rng):
    """Cortex, white matter, deep grey nuclei, CSF spaces and calcifications; fills `anat`."""
    x, y, z = anat.xyz
    depth, icm = anat.depth, anat.icm
    hu[icm] = p["wm"]
    band = icm & (depth < p["sulcus_depth"] + p["cortex"] + 1.0)
    idx = np.nonzero(band)
    folds, fold_depth = _fold_distance(anat.xyz, r_cav, band, p, rng)
    d = depth[idx]
    widen = np.clip(1.0 - d / fold_depth, 0.0, 1.0)  # sulci open towards the surface
    sulcus = (folds < p["sulcus_width"] * (1.0 + 0.6 * widen)) & (d < fold_depth)
    grey = (d < p["csf_layer"] + p["cortex"]) | (
        (folds < p["sulcus_width"] + p["cortex"]) & (d < fold_depth + 0.6 * p["cortex"])
    )
    hu[idx] = np.where(grey, np.float32(p["gm"]), np.float32(p["wm"]))
    anat.sulcal_dist[idx] = folds
    anat.csf[idx] = sulcus | (d < p["csf_layer"])
    for centre, semi, yaw in (
        ((9, 21, 8), (5, 7, 6), 0),
        ((21, 3, 2), (6, 15, 9), 15),
        ((9, -13, 4), (8, 12, 8), 0),
    ):  # caudate, lentiform, thalamus
        for s in (-1, 1):
            box, rho, _ = ellipsoid_rho(anat, (s * centre[0], *centre[1:]), semi, rotation(s * yaw))
            hu[box][rho < 1.0] = p["wm"] + 0.45 * (p["gm"] - p["wm"])
    # Basal cisterns: a thin rim around the midbrain (ambient / quadrigeminal, open in front),
    # the star-shaped suprasellar cistern ahead of it, and the sylvian fissures as curved sheets.
    box, rho, q = ellipsoid_rho(anat, (0, -9, -12), (11, 10, 7))
    anat.cisterns[box] = (rho < 1.0) & (np.hypot(q[0], q[1]) > 0.8) & (q[1] < 0.8)
    box, rho, q = ellipsoid_rho(anat, (0, 9, -13), (11, 9, 5))
    anat.cisterns[box] |= rho < 0.9 + 0.12 * np.cos(5.0 * np.arctan2(q[0], q[1]))
    for s in (-1, 1):
        box, rho, q = ellipsoid_rho(anat, (s * 42, 4, 0), (16, 18, 12), rotation(s * -20))
        anat.cisterns[box] |= (rho < 1.0) & (np.abs(16 * q[0] - 4 * q[1] ** 2) < 0.9)
    for label, centre, semi, yaw, pitch in _ventricle_parts(p):
        box, rho, _ = ellipsoid_rho(anat, centre, semi, rotation(yaw, pitch))
        anat.ventricles[box][(rho < 1.0) & (anat.ventricles[box] == 0)] = label
    anat.cisterns &= icm
    anat.ventricles[~icm] = 0
    # Interhemispheric fissure with the falx in it, except where the corpus callosum bridges.
    callosum = (np.abs(y) < 0.45 * p["ay"]) & (z < 0.35 * p["az_up"])
    fissure = icm & (np.abs(x) < 1.0) & ~callosum
    anat.csf |= anat.cisterns | (anat.ventricles > 0) | fissure
    hu[anat.csf] = p["csf"]
    hu[fissure & (np.abs(x) < 0.35)] = p["gm"] + 12.0  # the falx is dense dura
    calcs = ((p["choroid"], (-19, -29, 10), 3.2), (p["choroid"], (19, -29, 10), 3.2),
             (p["pineal"], (0, -22, 2), 3.0))  # fmt: skip
    for value, centre, semi in calcs:
        if value is not None:
            box, rho, _ = ellipsoid_rho(anat, centre, (semi, semi * 1.2, semi))
            anat.calcification[box] |= rho < 1.0
            hu[box][rho < 1.0] = value
    anat.parenchyma = icm & ~anat.csf & ~anat.calcification


def _build_anatomy(shape, spacing, rng):
    """Noise-free HU volume (X, Y, Z) float32, its affine, the `Anatomy` and the head parameters."""
    p = _sample_head(rng)
    affine = phantom_affine(shape, spacing)
    xyz, vox_to_head, rot = _head_coordinates(shape, affine, p)
    d_cav, r_cav = _cavity_field(*xyz, p)
    # The head outline equals the cavity's shape above its centre; only the lower half differs.
    d_env = d_cav.copy()
    low = np.nonzero(xyz[2] < 0)
    d_env[low] = _cavity_field(*(c[low] for c in xyz), p, floor_scale=4.0)[0]
    hu = np.full(shape, -1000.0, np.float32)
    soft = _paint_exterior(hu, xyz, d_cav, d_env, p)
    del d_env
    anat = Anatomy(
        xyz=xyz, vox_to_head=vox_to_head, depth=-d_cav,
        icm=d_cav < 0, csf=np.zeros(shape, bool), sulcal_dist=np.full(shape, np.inf, np.float32),
        ventricles=np.zeros(shape, np.uint8), cisterns=np.zeros(shape, bool),
        calcification=np.zeros(shape, bool), parenchyma=np.zeros(shape, bool),
        anterior_world=rot.T[:, 1],
        cavity_distance=lambda pts: _cavity_field(pts[:, 0], pts[:, 1], pts[:, 2], p)[0],
    )  # fmt: skip
    _paint_skull_base(hu, anat, soft, p)
    _paint_brain(hu, anat, r_cav, p, rng)
    return hu, affine, anat, p


def slice_labels_from_subtypes(subtypes: np.ndarray) -> np.ndarray:
    """(Z, 6) uint8 in SLICE_LABELS order: 1 where the axial slice holds any voxel of the label."""
    present = np.stack([(subtypes == i + 1).any(axis=(0, 1)) for i in range(len(SUBTYPES))], 1)
    return np.concatenate([present.any(axis=1, keepdims=True), present], axis=1).astype(np.uint8)


def _choose_subtypes(rng, subtype_probs) -> list[str]:
    probs = DEFAULT_SUBTYPE_PROBS if subtype_probs is None else subtype_probs
    unknown = set(probs) - set(SUBTYPES)
    if unknown:
        raise ValueError(f"subtype_probs: unknown subtypes {sorted(unknown)}; expected {SUBTYPES}")
    w = np.array([float(probs.get(s, 0.0)) for s in SUBTYPES])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"subtype_probs {probs}: weights must be >= 0 with a positive sum")
    n = min(int(np.count_nonzero(w)), 1 if rng.random() < 0.7 else 2)
    return [SUBTYPES[i] for i in rng.choice(len(SUBTYPES), size=n, replace=False, p=w / w.sum())]


def generate_case(
    seed: int,
    *,
    shape=DEFAULT_SHAPE,
    spacing=DEFAULT_SPACING,
    lesion: bool | None = None,
    subtype_probs: dict[str, float] | None = None,
    case_id: str | None = None,
) -> PhantomCase:
    """One synthetic head CT. Same (seed, shape, spacing, lesion, subtype_probs) -> same bits.

    lesion: None decides at random (2/3 of cases), True guarantees at least one hemorrhage.
    subtype_probs: relative weights of the subtypes a lesion case draws (1 or 2 of them).
    """
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape {shape} and spacing {spacing} must both have 3 entries")
    rng = np.random.default_rng(seed)
    hu, affine, anat, p = _build_anatomy(tuple(int(n) for n in shape), spacing, rng)
    if lesion is None:
        lesion = bool(rng.random() < 2.0 / 3.0)
    names = _choose_subtypes(rng, subtype_probs) if lesion else []
    subtypes = paint_lesions(anat, hu, names, rng)

    # Partial volume: the scanner PSF plus each voxel's own footprint (FWHM = its size), so the
    # thick slice direction blurs most.
    sigma_mm = np.sqrt(PSF_SIGMA_MM**2 + (np.asarray(spacing) / 2.355) ** 2)
    image = gaussian_filter(hu, sigma=sigma_mm / np.asarray(spacing), mode="nearest")
    image += rng.normal(0.0, p["noise"], size=image.shape).astype(np.float32)
    np.clip(image, -1024.0, 3071.0, out=image)
    return PhantomCase(
        image=image.astype(np.float32),
        mask=(subtypes > 0).astype(np.uint8),
        subtypes=subtypes,
        icm=anat.icm.astype(np.uint8),
        slice_labels=slice_labels_from_subtypes(subtypes),
        affine=affine,
        spacing=tuple(float(s) for s in spacing),
        case_id=case_id if case_id is not None else f"phantom_seed{seed}",
    )


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Writes ``data`` with ``affine`` (qform and sform: scanner coordinates, mm) atomically,
    creating the folder."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def write_case_nifti(case: PhantomCase, root: Path) -> dict[str, Path]:
    """Writes images (int16 HU), masks, subtypes and icm (uint8) NIfTIs with the case affine.

    Layout: root/{images,masks,subtypes,icm}/<case_id>.nii.gz; returns {folder name: path}.
    """
    arrays = {
        "images": np.round(case.image).astype(np.int16),
        "masks": case.mask.astype(np.uint8),
        "subtypes": case.subtypes.astype(np.uint8),
        "icm": case.icm.astype(np.uint8),
    }
    paths = {}
    for folder, data in arrays.items():
        paths[folder] = Path(root) / folder / f"{case.case_id}.nii.gz"
        save_nifti(data, case.affine, paths[folder])
    return paths


def _case_paths(root: Path, case_id: str) -> list[Path]:
    return [root / f / f"{case_id}.nii.gz" for f in ("images", "masks", "subtypes", "icm")]


def _dataset_case(root, index, meta, reuse) -> tuple[str, np.ndarray]:
    """Writes case `index` of a dataset (or reuses its files); returns (id, slice labels)."""
    case_id = f"{meta.get('prefix', 'phantom')}_{index:03d}"
    if reuse and all(p.exists() for p in _case_paths(root, case_id)):
        subtypes = np.asarray(nib.load(root / "subtypes" / f"{case_id}.nii.gz").dataobj)
        return case_id, slice_labels_from_subtypes(subtypes)
    # Case content depends only on (seed, index): the same with any number of workers.
    rng = np.random.default_rng([meta["seed"], index])
    case = generate_case(
        int(rng.integers(2**63 - 1)),
        shape=tuple(meta["shape"]),
        spacing=tuple(meta["spacing"]),
        lesion=bool(rng.random() < meta["lesion_fraction"]),
        subtype_probs=meta["subtype_probs"],
        case_id=case_id,
    )
    write_case_nifti(case, root)
    return case_id, case.slice_labels


def generate_dataset(
    root: Path,
    n_cases: int,
    seed: int,
    *,
    shape=DEFAULT_SHAPE,
    spacing=DEFAULT_SPACING,
    lesion_fraction: float = 0.67,
    subtype_probs: dict[str, float] | None = None,
    workers: int = 1,
    progress: bool = True,
    prefix: str = "phantom",
) -> list[str]:
    """Writes `n_cases` phantoms (phantom_000, ...) as NIfTI, slice_labels.csv and dataset.json.

    prefix: the case ids' (e.g. "pool" for a pretext pool beside a segmentation set).

    dataset.json is written last, so its presence marks a complete folder: re-running with the
    same arguments then only returns the ids. An interrupted run leaves .pending.json (its
    arguments); re-running with the same arguments keeps the cases it finished. Raises
    ValueError if root's dataset.json records other arguments (delete the folder to regenerate).
    """
    root = Path(root)
    meta = {
        "generator": "data_prep.synthetic.phantom",
        "seed": int(seed),
        "n_cases": int(n_cases),
        "shape": [int(n) for n in shape],
        "spacing": [float(s) for s in spacing],
        "lesion_fraction": float(lesion_fraction),
        "subtype_probs": None
        if subtype_probs is None
        else {k: float(v) for k, v in subtype_probs.items()},
    }
    if prefix != "phantom":  # recorded only when set: older folders keep matching
        meta["prefix"] = str(prefix)
    ids = [f"{prefix}_{i:03d}" for i in range(n_cases)]
    meta_path, pending = root / "dataset.json", root / ".pending.json"
    if meta_path.exists():
        existing = json.loads(meta_path.read_text())
        if existing != meta:
            raise ValueError(f"{meta_path}: holds a different dataset {existing}; wanted {meta}")
        if all(p.exists() for i in ids for p in _case_paths(root, i)):
            return ids
    # Files of an interrupted run are only reused if that run had the same arguments.
    reuse = meta_path.exists() or (pending.exists() and json.loads(pending.read_text()) == meta)
    root.mkdir(parents=True, exist_ok=True)
    pending.write_text(json.dumps(meta))
    bar = tqdm(total=n_cases, desc="phantoms", unit="case", disable=not progress)
    if workers > 1:
        # spawn, not fork: the parent may already run JAX threads, which fork would corrupt.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_dataset_case, root, i, meta, reuse) for i in range(n_cases)]
            results = []
            for f in futures:
                results.append(f.result())
                bar.update()
    else:
        results = []
        for i in range(n_cases):
            results.append(_dataset_case(root, i, meta, reuse))
            bar.update()
    bar.close()

    rows = [
        [case_id, z, *(int(v) for v in labels[z])]
        for case_id, labels in results
        for z in range(labels.shape[0])
    ]
    atomic_write_csv(root / "slice_labels.csv", ["case_id", "slice", *SLICE_LABELS], rows)
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    pending.unlink()
    return ids
