"""Synthetic chest/upper-abdomen CT phantoms with a known lung label (numpy only).

Every phantom is an analytic anatomy drawn at random from one seed: body ellipse with fat and
muscle wall, ribs, spine, mediastinum and heart, trachea and main bronchi, two lungs (~ -850 HU)
with a gravity gradient, texture, vessels, small airways, emphysema and lesions (ground glass,
consolidation), diaphragm domes with posterior costophrenic recesses, and below them liver,
spleen, stomach (air-fluid level), colon and small bowel gas, kidneys, aorta and table. It is
rendered super-sampled on any grid (partial volume), blurred like a reconstruction kernel and
given scanner noise. Version 1.1 adds what real scans showed: a mattress under a back
flattened on the table, paravertebral muscles that push the posterior chest wall forward beside
the spine (the lungs wrap round it in the gutters), costophrenic recesses running down the chest
wall as thin slivers, a diaphragm of varying thickness with colon and stomach gas right under
it, arms pressed against the trunk with air caught in the skin fold. Coordinates are patient
LPS in mm: +x patient left, +y posterior, +z superior; arrays are indexed [z, y, x] (the
SimpleITK/numpy order).

Labels: 0 background, 1 right lung, 2 left lung (the trachea and main bronchi are not lung;
lesions inside the lung are lung).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray

RIGHT_LUNG = 1
LEFT_LUNG = 2


@dataclass
class Anatomy:
    """Random anatomical parameters of one synthetic patient (mm, HU)."""

    rng_seed: int
    body_a: float
    body_b: float
    cx: float
    cy: float
    fat: float
    wall: float
    dome_r: float
    dome_l: float
    recess: float
    apex: float
    carina: float
    heart: tuple[float, float, float, float, float, float]
    spine_r: float
    lung_hu: float
    lung_gradient: float
    texture: float
    vessel_hu: float
    contrast: bool
    liver_hu: float
    spleen_hu: float
    ggo: float
    consolidation: float
    emphysema: float
    arms: bool
    table_gap: float
    gas_blobs: list[tuple[float, float, float, float, float, float]] = field(default_factory=list)
    stomach_gas: float = 0.0
    back_flat: float = 0.0  # mm the back is flattened against the table
    mattress: float = 0.0  # mattress thickness (mm; 0: none)
    mattress_hu: float = -900.0
    para_w: float = 0.0  # paravertebral muscle half-width beside the spine (mm)
    para_d: float = 0.0  # how far it reaches forward from the posterior wall (mm)
    sliver: float = 0.0  # extra depth of the recesses along the chest wall (mm)
    diaphragm: float = 4.0  # diaphragm thickness (mm)
    arm_gap: float = 40.0  # arm to trunk (mm; < 0: pressed against it)


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient."""
    body_a = rng.uniform(125, 185)
    body_b = body_a * rng.uniform(0.62, 0.82)
    fat = rng.uniform(4, 30)
    wall = rng.uniform(8, 16)
    a_c, b_c = body_a - fat - wall, body_b - fat - wall
    dome_r = 0.0
    dome_l = -rng.uniform(0, 20)
    lesion_draw = rng.uniform()
    gas_blobs = []
    for _ in range(int(rng.integers(1, 7))):
        side = rng.choice([-1.0, 1.0], p=[0.3, 0.7])
        gas_blobs.append(
            (
                float(side * rng.uniform(0.1, 0.85) * a_c),  # x from centre
                float(-rng.uniform(-0.45, 0.8) * b_c),  # y from centre (anterior)
                float(-rng.uniform(0, 110)),  # z below the dome
                float(rng.uniform(12, 40)),
                float(rng.uniform(10, 30)),
                float(rng.uniform(10, 35)),
            )
        )
    return Anatomy(
        rng_seed=int(rng.integers(0, 2**31)),
        body_a=body_a,
        body_b=body_b,
        cx=rng.uniform(-25, 25),
        cy=rng.uniform(-30, 30),
        fat=fat,
        wall=wall,
        dome_r=dome_r,
        dome_l=dome_l,
        recess=rng.uniform(35, 80),
        apex=rng.uniform(150, 210),
        carina=rng.uniform(80, 120),
        heart=(
            rng.uniform(5, 35),
            -rng.uniform(0.1, 0.35) * b_c,
            rng.uniform(0.28, 0.42) * a_c,
            rng.uniform(0.35, 0.5) * b_c,
            rng.uniform(15, 35),
            rng.uniform(90, 130),
        ),
        spine_r=rng.uniform(15, 24),
        lung_hu=rng.uniform(-890, -800),
        lung_gradient=rng.uniform(0, 90),
        texture=rng.uniform(8, 35),
        vessel_hu=rng.uniform(-20, 200),
        contrast=bool(rng.uniform() < 0.5),
        liver_hu=rng.uniform(45, 120),
        spleen_hu=rng.uniform(40, 130),
        ggo=rng.uniform(0, 0.45) if lesion_draw < 0.4 else 0.0,
        consolidation=rng.uniform(0, 0.3) if 0.25 < lesion_draw < 0.6 else 0.0,
        emphysema=rng.uniform(0, 0.15) if rng.uniform() < 0.25 else 0.0,
        arms=bool(rng.uniform() < 0.3),
        table_gap=rng.uniform(2, 40),
        gas_blobs=gas_blobs,
        stomach_gas=rng.uniform(0, 1),
        back_flat=rng.uniform(0, 0.6 * (fat + wall)),
        mattress=rng.uniform(15, 70) if rng.uniform() < 0.75 else 0.0,
        mattress_hu=rng.uniform(-950, -150),
        para_w=rng.uniform(25, 50),
        para_d=rng.uniform(15, 45),
        sliver=rng.uniform(0, 35),
        diaphragm=rng.uniform(3, 7),
        arm_gap=rng.uniform(-12, 40),
    )


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]
) -> tuple[Array, Array]:
    """Two independent unit-variance Gaussian random fields (periodic FFT smoothing)."""
    white = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    spectrum = np.fft.fftn(white)
    for axis, (n, sigma) in enumerate(zip(shape, sigma_vox, strict=True)):
        freq = np.fft.fftfreq(n)
        gain = np.exp(-2 * (np.pi * freq * sigma) ** 2)
        spectrum *= gain.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    field_ = np.fft.ifftn(spectrum)
    out = []
    for part in (field_.real, field_.imag):
        std = part.std()
        out.append((part / (std if std > 0 else 1.0)).astype(np.float32))
    return out[0], out[1]


def _blur(image: Array, sigma_vox: tuple[float, float, float]) -> Array:
    """Gaussian blur by FFT with reflected padding (edge effects kept small)."""
    pad = [(int(3 * s) + 1, int(3 * s) + 1) for s in sigma_vox]
    padded = np.pad(image, pad, mode="edge")
    spectrum = np.fft.rfftn(padded)
    for axis, sigma in enumerate(sigma_vox):
        n = padded.shape[axis]
        freq = np.fft.rfftfreq(n) if axis == 2 else np.fft.fftfreq(n)
        gain = np.exp(-2 * (np.pi * freq * sigma) ** 2)
        spectrum *= gain.reshape([-1 if i == axis else 1 for i in range(3)])
    out = np.fft.irfftn(spectrum, s=padded.shape, axes=(0, 1, 2))
    sl = tuple(slice(p[0], p[0] + n) for p, n in zip(pad, image.shape, strict=True))
    return out[sl].astype(np.float32)


def _draw(
    anat: Anatomy, x: Array, y: Array, z: Array, rng: np.random.Generator, step: float
) -> tuple[Array, Array]:
    """HU and label on the grid x[1,1,X], y[1,Y,1], z[Z,1,1] (mm)."""
    shape = (z.shape[0], y.shape[1], x.shape[2])
    a_c = anat.body_a - anat.fat - anat.wall
    b_c = anat.body_b - anat.fat - anat.wall
    dx, dy = x - anat.cx, y - anat.cy
    # body cross-section changes slowly with z (shoulders wider, abdomen rounder)
    zs = 1.0 + 0.06 * np.tanh((z - anat.carina) / 60.0)
    rho_body = np.sqrt((dx / (anat.body_a * zs)) ** 2 + (dy / (anat.body_b * zs)) ** 2)
    y_back = anat.body_b - anat.back_flat  # the back lies flat on the mattress
    rho_fat = np.sqrt(
        (dx / ((anat.body_a - anat.fat) * zs)) ** 2 + (dy / ((anat.body_b - anat.fat) * zs)) ** 2
    )
    # thoracic cavity narrows towards the apex
    taper = np.sqrt(np.clip(1.0 - np.clip((z - (anat.apex - 70)) / 70.0, 0, None) ** 2, 0.0, 1.0))
    cav_a = a_c * zs * np.maximum(taper, 1e-3)
    cav_b = b_c * zs * np.maximum(taper, 1e-3)
    rho_cav = np.sqrt((dx / cav_a) ** 2 + ((dy + 0.05 * b_c) / cav_b) ** 2)

    n1, n2 = _smooth_noise(rng, shape, (4.0 / step,) * 3)  # vessels (curves = two level sets)
    n3, n4 = _smooth_noise(rng, shape, (7.0 / step,) * 3)  # lesions, emphysema
    n5, n6 = _smooth_noise(rng, shape, (2.0 / step,) * 3)  # fine texture, fat mottle
    n7, n8 = _smooth_noise(rng, shape, (9.0 / step,) * 3)  # small airways, bowel content

    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu += 8.0 * n5
    body = (rho_body < 1.0) & (dy < y_back)
    hu = np.where(body, -100.0 + 10 * n6, hu)
    muscle = body & (rho_fat < 1.0) & (dy < y_back - 0.3 * anat.fat)
    hu = np.where(muscle, 45.0 + 8 * n6, hu)
    # paravertebral muscles: the posterior wall comes forward beside the spine
    paraspinal = (dx / (anat.spine_r + anat.para_w)) ** 2 + (
        (dy - b_c * zs) / anat.para_d
    ) ** 2 < 1.0
    cavity = (rho_cav < 1.0) & ~paraspinal

    # diaphragm per side: paraboloid domes, deepest posterolaterally
    def dome(top: float, side: float) -> Array:
        q = ((dx - side * 0.45 * a_c) / (0.62 * a_c)) ** 2 + ((dy + 0.15 * b_c) / (0.85 * b_c)) ** 2
        edge = np.clip((rho_cav - 0.8) / 0.2, 0, 1) ** 2  # recesses run down the chest wall
        return (
            top
            - anat.recess * np.minimum(q, 1.6)
            - 12.0 * np.clip(dy / b_c, 0, None)
            - anat.sliver * edge
        )

    right_side = dx < 0
    z_d = np.where(right_side, dome(anat.dome_r, -1.0), dome(anat.dome_l, 1.0))
    above = z > z_d
    below = z < z_d - anat.diaphragm

    # mediastinum: central band widening anteriorly, heart, spine
    hx, hy, ha, hb, hz0, hz1 = anat.heart
    hz = (z - (anat.dome_r + hz0 + hz1 / 2)) / (hz1 / 2)
    heart = ((dx - hx) / ha) ** 2 + ((dy - hy) / hb) ** 2 + hz**2 < 1.0
    med_w = 18.0 + 14.0 * np.clip(-dy / b_c, 0, 1)
    mediastinum = np.abs(dx - 4.0) < med_w
    spine_y = b_c * 0.92 - anat.spine_r * 0.55
    spine = (dx / anat.spine_r) ** 2 + ((dy - spine_y) / anat.spine_r) ** 2 < 1.0
    para = (dx / (anat.spine_r + 6)) ** 2 + ((dy - spine_y) / (anat.spine_r + 4)) ** 2 < 1.0
    aorta = ((dx - 0.9 * anat.spine_r) ** 2 + (dy - spine_y + 1.6 * anat.spine_r) ** 2) < 13.0**2

    # trachea and main bronchi (air, not lung)
    trachea_c = (dx - 2.0) ** 2 + (dy - 0.15 * b_c) ** 2 < 9.5**2
    trachea = trachea_c & (z > anat.carina) & (z < anat.apex + 40)
    t = np.clip((anat.carina - z) / 35.0, 0, 1)
    bronchi = np.zeros(shape, bool)
    for side in (-1.0, 1.0):
        bx = 2.0 + side * 45.0 * t
        by = 0.15 * b_c + 10.0 * t
        bronchi |= (
            ((dx - bx) ** 2 + (dy - by) ** 2 < 6.5**2) & (z <= anat.carina) & (z > anat.carina - 35)
        )
    airway = trachea | bronchi

    lung = cavity & above & ~mediastinum & ~heart & ~para & ~(aorta & (z > anat.dome_r))
    lung &= z < anat.apex
    lung &= ~airway

    # ribs: oblique bands in the chest wall, down to the upper abdomen
    theta = np.arctan2(dy, dx)
    rib_zone = (rho_cav >= 1.0) & (rho_cav < 1.0 + 11.0 / a_c) & (z > anat.dome_r - 140)
    rib_phase = np.cos(2 * np.pi * (z + 18.0 * np.sin(theta)) / 26.0)
    ribs = rib_zone & (rib_phase > 0.45) & muscle & (np.abs(np.sin(theta)) > 0.15)
    hu = np.where(ribs, 350.0 + 250 * (rib_phase - 0.45) + 30 * n5, hu)

    # abdomen below the domes
    abdomen = cavity & below
    hu = np.where(abdomen, np.where(n6 > 0.6, -95.0, 25.0) + 8 * n5, hu)
    liver = abdomen & (dx < 0.25 * a_c - 0.3 * dy) & (z > anat.dome_r - 170) & (rho_cav < 0.97)
    hu = np.where(liver, anat.liver_hu + 6 * n5, hu)
    sx, sy = 0.62 * a_c, 0.45 * b_c
    spleen = abdomen & (
        ((dx - sx) / 28) ** 2 + ((dy - sy) / 48) ** 2 + ((z - anat.dome_l + 55) / 55) ** 2 < 1
    )
    hu = np.where(spleen, anat.spleen_hu + 6 * n5, hu)
    kid = abdomen & (np.abs(np.abs(dx) - 0.45 * a_c) < 30) & (np.abs(dy - 0.55 * b_c) < 25)
    kid &= z < anat.dome_r - 80
    hu = np.where(kid, 35.0 + (120 if anat.contrast else 0), hu)
    # stomach with air-fluid level (supine: gas anterior)
    st = abdomen & (
        ((dx - 0.3 * a_c) / 45) ** 2
        + ((dy + 0.3 * b_c) / 38) ** 2
        + ((z - anat.dome_l + 40) / 45) ** 2
        < 1
    )
    hu = np.where(st, 15.0 + 10 * n5, hu)
    gas_level = -0.3 * b_c - 38 + 76 * (1 - anat.stomach_gas)
    hu = np.where(st & (dy < gas_level), -1000.0 + 15 * n5, hu)
    # colon and bowel gas, mottled faeces
    for gx, gy, gz, rx, ry, rz in anat.gas_blobs:
        lump = 1.0 + 0.25 * n7
        d = ((dx - gx) / rx) ** 2 + ((dy - gy) / ry) ** 2 + ((z - (anat.dome_r + gz)) / rz) ** 2
        wall_ = abdomen & (d < 1.3 * lump)
        hu = np.where(wall_, 35.0 + 5 * n5, hu)
        inner = abdomen & (d < lump)
        gas = np.where(n8 > 0.8, -250.0 + 150 * n5, -1000.0 + 15 * n5)
        hu = np.where(inner, gas, hu)
    hu = np.where(below & cavity & aorta, 40.0 + (180 if anat.contrast else 0), hu)

    # diaphragm muscle and mediastinal soft tissue
    hu = np.where(cavity & ~above & ~below, 40.0 + 5 * n5, hu)
    med = cavity & above & (mediastinum | heart | para) & (z < anat.apex)
    hu = np.where(med, np.where(n6 > 0.3, -90.0, 30.0) + 6 * n5, hu)
    blood = 45.0 + (200 if anat.contrast else 0)
    hu = np.where(cavity & above & heart, blood + 8 * n5, hu)
    hu = np.where(cavity & above & aorta, blood, hu)
    hu = np.where(airway, -990.0 + 10 * n5, hu)
    hu = np.where(
        spine & (z < anat.apex + 40),
        260.0 + 60 * np.cos(2 * np.pi * z / 28.0) + 30 * n5,
        hu,
    )

    # lung parenchyma
    grad = anat.lung_gradient * np.clip((dy + b_c) / (2 * b_c), 0, 1)
    lung_hu = anat.lung_hu + grad + anat.texture * n5
    vessel_r = 0.14 + 0.14 * np.clip(1 - rho_cav, 0, 1)  # thicker centrally
    vessels = (np.abs(n1) < vessel_r) & (np.abs(n2) < vessel_r)
    lung_hu = np.where(vessels, anat.vessel_hu, lung_hu)
    small_aw = (np.abs(n7) < 0.06) & (np.abs(n8) < 0.06) & (rho_cav < 0.75)
    lung_hu = np.where(small_aw, -960.0, lung_hu)
    if anat.emphysema:
        lung_hu = np.where(n4 > 2.2 - 6 * anat.emphysema, -975.0 + 10 * n5, lung_hu)
    if anat.ggo:
        ggo = n3 + 0.8 * np.clip(rho_cav - 0.5, 0, 1) > 2.3 - 3.0 * anat.ggo
        lung_hu = np.where(ggo, np.maximum(lung_hu, -620.0 + 60 * n5 + 80 * n4.clip(0)), lung_hu)
    if anat.consolidation:
        cons = n4 + 1.2 * np.clip(dy / b_c, 0, 1) > 2.6 - 3.0 * anat.consolidation
        lung_hu = np.where(cons & ~small_aw, 25.0 + 12 * n5, lung_hu)
    hu = np.where(lung, lung_hu, hu)

    # mattress under the back, arms beside (or pressed against) the body, patient table below
    ty = y_back + anat.table_gap
    if anat.mattress:
        mat = ~body & (dy < y_back + anat.mattress) & (dy > y_back - 0.35 * anat.body_b)
        mat &= np.abs(dx) < 1.15 * anat.body_a
        hu = np.where(mat, anat.mattress_hu + 20 * n6, hu)
        ty = y_back + anat.mattress + 2.0
    if anat.arms:
        for side in (-1.0, 1.0):
            ax = side * (anat.body_a + anat.arm_gap + 40)
            arm = (((dx - ax) / 40) ** 2 + (dy / 48) ** 2 < 1) & ~cavity
            bone = ((dx - ax) / 11) ** 2 + (dy / 11) ** 2 < 1
            hu = np.where(
                arm, np.where(((dx - ax) / 34) ** 2 + (dy / 42) ** 2 < 1, 45.0, -90.0), hu
            )
            hu = np.where(bone, 700.0, hu)
            if anat.arm_gap < 0:  # air caught in the skin fold between arm and trunk
                fold = ((dx - side * (anat.body_a + 0.5 * anat.arm_gap)) / 5.0) ** 2 + (
                    (dy - 0.3 * anat.body_b) / 18.0
                ) ** 2 < 1
                hu = np.where(fold & ~cavity, -1000.0 + 15 * n5, hu)
    table = (np.abs(dy - ty + 0.0015 * dx**2) < 3) & (np.abs(dx) < 230)
    hu = np.where(table & ~body, 150.0, hu)

    label = np.where(lung, np.where(right_side, RIGHT_LUNG, LEFT_LUNG), 0).astype(np.uint8)
    return hu.astype(np.float32), label


def render(
    anat: Anatomy,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    z0: float,
    rng: np.random.Generator,
    supersample: tuple[int, int] = (2, 2),
    noise: float | None = None,
    blur: float | None = None,
) -> tuple[Array, Array]:
    """Render ``anat`` on a [z, y, x] grid centred in-plane at 0, first slice at ``z0`` mm.

    ``spacing`` is (x, y, z) mm. Intensities are averaged over ``supersample`` = (along z,
    in-plane) sub-voxels (partial volume); a voxel is lung where more than half its sub-voxels
    are, on the side that has more of them.
    Returns (HU float32, label uint8).
    """
    nz, ny, nx = shape
    sx, sy, sz = spacing
    fz, f = supersample

    def axis(n: int, step: float, k: int, start: float) -> Array:
        off = (np.arange(k) + 0.5) / k - 0.5
        return (start + np.arange(n)[:, None] * step + off[None, :] * step).ravel()

    xs = axis(nx, sx, f, -(nx - 1) / 2 * sx)
    ys = axis(ny, sy, f, -(ny - 1) / 2 * sy)
    zs = axis(nz, sz, fz, z0)
    hu_f, lab_f = _draw(
        anat, xs[None, None, :], ys[None, :, None], zs[:, None, None], rng, min(sx, sy) / f
    )
    k_blur = blur if blur is not None else rng.uniform(0.3, 1.1)  # mm, reconstruction kernel
    hu_f = _blur(hu_f, (k_blur * fz / sz, k_blur * f / sy, k_blur * f / sx))
    hu = hu_f.reshape(nz, fz, ny, f, nx, f).mean(axis=(1, 3, 5))
    lab = lab_f.reshape(nz, fz, ny, f, nx, f)
    right = (lab == RIGHT_LUNG).mean(axis=(1, 3, 5))
    left = (lab == LEFT_LUNG).mean(axis=(1, 3, 5))
    # lung where more than half of the voxel is lung (ties broken at random)
    tie = rng.uniform(-1e-3, 1e-3, right.shape)
    label = np.where(right + left + tie > 0.5, np.where(right >= left, RIGHT_LUNG, LEFT_LUNG), 0)
    sigma = noise if noise is not None else rng.uniform(3, 35)
    hu = hu + sigma * rng.standard_normal(hu.shape).astype(np.float32)
    hu += rng.uniform(-15, 15)  # calibration offset
    return hu.astype(np.float32), label.astype(np.uint8)


def random_volume(
    seed: int,
    shape: tuple[int, int, int] = (60, 128, 128),
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
    supersample: tuple[int, int] = (2, 2),
) -> tuple[Array, Array, Anatomy]:
    """A whole phantom volume [z, y, x] from the upper abdomen into the chest."""
    rng = np.random.default_rng(seed)
    anat = random_anatomy(rng)
    z0 = anat.dome_r - rng.uniform(60, 140)
    hu, label = render(anat, shape, spacing, z0, rng, supersample)
    return hu, label, anat
