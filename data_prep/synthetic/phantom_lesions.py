"""Hemorrhage painters for the synthetic head CT, and the head-frame geometry they share with it.

All shapes are built in the *head frame*: millimetres, origin at the centre of the intracranial
cavity, +x = patient right, +y = anterior, +z = superior (before the random pose). `Anatomy` holds
the head-frame coordinates of every voxel plus the tissue maps a painter needs (depth under the
inner table, CSF spaces, ventricles, ...), so a lesion looks the same at any voxel spacing.

Each painter returns a boolean lesion mask (X, Y, Z) inside the intracranial cavity and writes its
density (HU) into the image in place; `paint_lesions` stamps the subtype map.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lesionjax.core.labels import SUBTYPES

# Acute blood on CT; the per-lesion mean is drawn inside this range.
BLOOD_HU = (55.0, 85.0)
# Vasogenic edema around an intraparenchymal clot: hypodense against white matter.
EDEMA_HU = (15.0, 24.0)
# A painted lesion smaller than this (voxels) is redrawn, so `lesion=True` always shows one.
MIN_LESION_VOXELS = 8


@dataclass
class Anatomy:
    """Head-frame geometry and tissue maps of one phantom; arrays are (X, Y, Z) voxel grids.

    xyz: three float32 arrays, head-frame coordinates (mm) of every voxel centre.
    vox_to_head: (4, 4) float64, voxel index -> head-frame mm.
    depth: float32, mm inside the inner table of the skull (negative outside the cavity).
    icm: bool, intracranial cavity (depth > 0).
    csf: bool, every CSF space (surface layer, sulci, fissures, cisterns, ventricles).
    sulcal_dist: float32, approximate distance (mm) to the mid-plane of a cortical fold.
    ventricles: uint8, 0 none, 1 left lateral, 2 right lateral, 3 third, 4 fourth ventricle.
    cisterns: bool, basal cisterns and sylvian fissures.
    calcification: bool, choroid plexus / pineal calcifications (never part of a lesion).
    parenchyma: bool, brain tissue (icm and not CSF).
    anterior_world: (3,) head-frame unit vector of world +y; gravity pulls along it in a supine
        patient, so blood layers where `xyz . anterior_world` is smallest.
    cavity_distance: maps head-frame points (N, 3) to signed distance (mm) to the inner table,
        negative inside; used to place lesions relative to the skull.
    """

    xyz: tuple[np.ndarray, np.ndarray, np.ndarray]
    vox_to_head: np.ndarray
    depth: np.ndarray
    icm: np.ndarray
    csf: np.ndarray
    sulcal_dist: np.ndarray
    ventricles: np.ndarray
    cisterns: np.ndarray
    calcification: np.ndarray
    parenchyma: np.ndarray
    anterior_world: np.ndarray
    cavity_distance: Callable[[np.ndarray], np.ndarray]


def rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """(3, 3) rotation: yaw about z (axial plane), then pitch about x, then roll about y."""
    a, b, c = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def head_box(anat: Anatomy, lo, hi) -> tuple[slice, slice, slice]:
    """Voxel slices covering the head-frame box [lo, hi] (mm), so shapes are drawn only there."""
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])  # fmt: skip
    idx = (np.linalg.inv(anat.vox_to_head) @ corners.T)[:3]
    shape = anat.depth.shape
    start = np.clip(np.floor(idx.min(axis=1)).astype(int), 0, shape)
    stop = np.clip(np.ceil(idx.max(axis=1)).astype(int) + 1, 0, shape)
    return tuple(slice(a, b) for a, b in zip(start, stop, strict=True))


def ellipsoid_rho(anat: Anatomy, centre, semi_axes, rot=None):
    """Normalised radius (1 on the surface) of a rotated ellipsoid, evaluated only in its box.

    centre, semi_axes: head-frame mm; rot: (3, 3) rotation of the ellipsoid's axes (None = I).
    Returns (box slices, rho float32 over the box, local coordinates q (3, ...) in units of axes).
    """
    centre, semi_axes = np.asarray(centre, float), np.asarray(semi_axes, float)
    reach = semi_axes.max() * 1.6  # covers the ellipsoid plus the perturbations painters add
    box = head_box(anat, centre - reach, centre + reach)
    rot = np.eye(3) if rot is None else rot
    d = [anat.xyz[i][box] - np.float32(centre[i]) for i in range(3)]
    q = [sum(np.float32(rot[i, j]) * d[j] for j in range(3)) / np.float32(semi_axes[i])
         for i in range(3)]  # fmt: skip
    rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    return box, rho, q


def _random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _surface_point(anat: Anatomy, direction: np.ndarray) -> np.ndarray:
    """Head-frame point where the ray from the cavity centre along `direction` meets the table."""
    t = np.arange(0.0, 120.0, 0.5)
    d = anat.cavity_distance(t[:, None] * direction[None, :])
    return t[np.argmax(d > 0)] * direction


def _direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector; azimuth 0 = patient right, 90 = anterior; elevation 90 = vertex."""
    a, e = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    return np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])


def _angle_from(anat: Anatomy, axis: np.ndarray) -> np.ndarray:
    """Angle (rad) between each voxel's direction from the cavity centre and `axis`."""
    x, y, z = anat.xyz
    r = np.sqrt(x * x + y * y + z * z) + np.float32(1e-3)
    cos = (x * np.float32(axis[0]) + y * np.float32(axis[1]) + z * np.float32(axis[2])) / r
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _paint(image: np.ndarray, mask: np.ndarray, hu: float, rng: np.random.Generator) -> None:
    # Clot is not uniform: a few HU of heterogeneity keeps it from looking pasted in.
    image[mask] = hu + rng.normal(0.0, 3.0, size=int(mask.sum())).astype(np.float32)


def intraparenchymal(anat, image, rng) -> np.ndarray:
    """Irregular lobulated clot of 5-60 mL, deep (basal ganglia, thalamus) or lobar; 60 % edema."""
    volume_mm3 = np.exp(rng.uniform(np.log(5.0), np.log(60.0))) * 1000.0
    r0 = (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
    aspect = rng.uniform(0.75, 1.3, size=3)
    semi = r0 * aspect / np.prod(aspect) ** (1.0 / 3.0)
    if rng.random() < 0.5:  # deep (hypertensive) bleed: putamen / thalamus
        side = float(rng.choice([-1.0, 1.0]))
        centre = np.array([side * rng.uniform(14, 26), rng.uniform(-14, 10), rng.uniform(0, 14)])
    else:  # lobar bleed: anywhere in a hemisphere, kept clear of the inner table
        u = _direction(rng.uniform(0, 360), rng.uniform(0, 50))
        surface = _surface_point(anat, u)
        inset = semi.max() + rng.uniform(6.0, 14.0)
        centre = surface * max(0.15, 1.0 - inset / np.linalg.norm(surface))
    rot = rotation(*rng.uniform(-90, 90, size=3))
    box, rho, q = ellipsoid_rho(anat, centre, semi, rot)
    # Lobulation: a few low-order angular harmonics on the surface radius.
    waves = _random_unit(rng, 4) * rng.uniform(1.5, 3.5, size=(4, 1))
    bumps = sum(np.float32(rng.uniform(0.07, 0.16)) * np.cos(w[0] * q[0] + w[1] * q[1] + w[2] * q[2]
                + np.float32(rng.uniform(0, 2 * np.pi))) for w in waves)  # fmt: skip
    shape_rho = rho / (1.0 + bumps)
    mask = np.zeros(image.shape, bool)
    mask[box] = (shape_rho < 1.0) & (anat.depth[box] > 3.0) & (anat.ventricles[box] == 0)
    if rng.random() < 0.6:
        edema = np.zeros(image.shape, bool)
        rim = 1.0 + rng.uniform(4.0, 10.0) / r0
        edema[box] = (shape_rho < rim) & anat.parenchyma[box] & ~mask[box]
        image[edema] = rng.uniform(*EDEMA_HU) + rng.normal(0, 2.0, int(edema.sum()))
    # Retracting clots are densest in the centre.
    base = rng.uniform(*BLOOD_HU)
    image[mask] = (base + 8.0 * (0.5 - shape_rho[mask[box]])).astype(np.float32)
    return mask


def intraventricular(anat, image, rng) -> np.ndarray:
    """Blood layering in the dependent (posterior) part of one or both lateral ventricles."""
    sides = {0: [1], 1: [2], 2: [1, 2]}[int(rng.choice(3, p=[0.3, 0.3, 0.4]))]
    x, y, z = anat.xyz
    g = anat.anterior_world.astype(np.float32)
    height = x * g[0] + y * g[1] + z * g[2]  # distance "up" against gravity (supine)
    mask = np.zeros(image.shape, bool)
    for side in sides:
        vent = (anat.ventricles == side) & ~anat.calcification
        if vent.any():
            level = np.quantile(height[vent], rng.uniform(0.15, 0.45))
            mask |= vent & (height <= level)
    if rng.random() < 0.3:  # blood cast of the third ventricle
        mask |= (anat.ventricles == 3) & ~anat.calcification
    _paint(image, mask, rng.uniform(*BLOOD_HU), rng)
    return mask


def _extra_axial(anat, axis, half_angle_deg, max_thick, profile) -> np.ndarray:
    """Collection against the inner table: thickness profile(angle / half-angle) * max_thick."""
    ang = _angle_from(anat, axis) / np.float32(np.deg2rad(half_angle_deg))
    inside = ang < 1.0
    thick = np.zeros_like(ang)
    thick[inside] = max_thick * profile(ang[inside])
    side = float(np.sign(axis[0]))
    # The falx stops a convexity collection at the midline.
    return anat.icm & inside & (anat.depth < thick) & (side * anat.xyz[0] > 2.0)


def subdural(anat, image, rng) -> np.ndarray:
    """Crescent along the convexity: wide (crosses sutures), several mm thick, tapering ends."""
    side = float(rng.choice([-1.0, 1.0]))
    azimuth = (0.0 if side > 0 else 180.0) + side * rng.uniform(-35, 45)
    axis = _direction(azimuth, rng.uniform(5, 40))
    mask = _extra_axial(anat, axis, rng.uniform(28, 55), rng.uniform(5.0, 14.0),
                        lambda a: np.sqrt(1.0 - a**2) * (1.0 - 0.3 * a))  # fmt: skip
    mask &= ~anat.calcification
    _paint(image, mask, rng.uniform(*BLOOD_HU), rng)
    return mask


def epidural(anat, image, rng) -> np.ndarray:
    """Biconvex lens against the skull, confined by sutures (small angular extent), thick centre."""
    side = float(rng.choice([-1.0, 1.0]))
    azimuth = (0.0 if side > 0 else 180.0) + side * rng.uniform(-30, 40)
    axis = _direction(azimuth, rng.uniform(-5, 35))
    mask = _extra_axial(anat, axis, rng.uniform(16, 26), rng.uniform(10.0, 22.0),
                        lambda a: np.sqrt(1.0 - a**2))  # fmt: skip
    _paint(image, mask, rng.uniform(60.0, 85.0), rng)
    return mask


def subarachnoid(anat, image, rng) -> np.ndarray:
    """Thin blood filling the CSF spaces: convexity sulci around a point, or the basal cisterns."""
    width = np.float32(rng.uniform(0.8, 1.3))  # blood-filled sulci, slightly wider than CSF ones
    if rng.random() < 0.5:  # aneurysmal pattern: cisterns and sylvian fissures
        centre, radius = np.array([0.0, 5.0, -12.0]), rng.uniform(35, 55)
    else:  # convexity SAH
        u = _direction(rng.uniform(0, 360), rng.uniform(10, 60))
        centre, radius = _surface_point(anat, u), rng.uniform(25, 45)
    box, rho, _ = ellipsoid_rho(anat, centre, [radius] * 3)
    thin_spaces = (anat.sulcal_dist[box] < width) | (anat.depth[box] < 2.5) | anat.cisterns[box]
    thin_spaces &= anat.icm[box] & (anat.ventricles[box] == 0) & ~anat.calcification[box]
    mask = np.zeros(image.shape, bool)
    mask[box] = thin_spaces & (rho < 1.0)
    _paint(image, mask, rng.uniform(55.0, 75.0), rng)
    return mask


PAINTERS = {
    "subarachnoid": subarachnoid,
    "intraventricular": intraventricular,
    "intraparenchymal": intraparenchymal,
    "subdural": subdural,
    "epidural": epidural,
}


def paint_lesions(anat: Anatomy, image: np.ndarray, names, rng) -> np.ndarray:
    """Paints the named subtypes into `image` (in place); returns the uint8 subtype map (X, Y, Z).

    Painted in a fixed anatomical order (sulci first, extra-axial last) so a later, more superficial
    collection overwrites an earlier one where they meet; a lesion that came out too small for the
    grid (e.g. IVH in tiny ventricles at coarse spacing) is redrawn.
    """
    subtypes = np.zeros(image.shape, np.uint8)
    for name in sorted(names, key=list(PAINTERS).index):
        for _ in range(5):
            trial = image.copy()
            mask = PAINTERS[name](anat, trial, rng) & anat.icm & ~anat.calcification
            if mask.sum() >= MIN_LESION_VOXELS:
                break
        changed = trial != image
        image[changed] = trial[changed]
        subtypes[mask] = SUBTYPES.index(name) + 1
    return subtypes
