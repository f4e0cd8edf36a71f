"""Synthetic phantom brain-MRI slices with tumours, for the demo and the unit tests.

The phantom is an axial slice drawn in a *head frame*: image coordinates in [-1, 1], moved to
the patient's head centre, rotated by the head's tilt and divided by a depth-dependent scale, so
that everything drawn in this frame follows the head as it moves, tilts and shrinks toward the
ends of the stack. In that frame a slice has, from outside in:

* a bright thin skull ring (an ellipse with per-patient semi-axes), a thin dark CSF gap;
* brain: grey matter at the cortex and white matter inside, mixed by a smooth random field
  (low-pass filtered noise) so that every patient has its own gyri-like texture; a dark
  interhemispheric fissure and two dark ventricles near the centre that shrink off-centre;
* a tumour whose look depends on its TYPE and GRADE (sampled once per patient):

  - astrocytoma: intra-axial, in one hemisphere, irregular blobby outline, surrounding oedema,
    heterogeneous; grade 3 is larger, more heterogeneous, with more oedema and a bright
    enhancing rim around a dark necrotic core;
  - meningioma: extra-axial, a dome attached to the inner skull edge, homogeneous bright
    enhancement, little oedema; grade 2 has a lobulated border and mild heterogeneity;
  - pituitary: small, round, midline, in the lower-central (sellar) region, bright, homogeneous.

Each slice is drawn as three MRI-like sequences (T1-like: oedema hypointense; FLAIR-like: CSF
dark, oedema bright; post-contrast-T1-like: enhancing tumour bright). ``render_slice`` returns
the post-contrast one, which is also the grayscale image written with ``channels=1``.

``depth`` in [-1, 1] is the position of a slice in its patient's stack: the head and the tumour
cross-section shrink toward the ends, the texture and ventricles change smoothly, and a tumour is
absent beyond its per-patient extent (which always covers at least half of the stack).

A tumour only covers a few per cent of the image, while each patient gets a random brightness
(gain), contrast (gamma) and noise level: the class changes the image's global statistics far less
than the acquisition does, so a classifier has to look at the tumour itself. Everything is
vectorised numpy (plus ``scipy.ndimage.gaussian_filter``): the default dataset (5 classes x 4
patients x 8 slices at 128 px) takes one to two seconds to write on two CPU cores.
"""

from __future__ import annotations

import functools
import math
import operator
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

DEFAULT_CLASSES: tuple[tuple[str, str], ...] = (
    ("astrocytoma", "2"),
    ("astrocytoma", "3"),
    ("meningioma", "1"),
    ("meningioma", "2"),
    ("pituitary", "1"),
)

_TUMOR_TYPES = ("astrocytoma", "meningioma", "pituitary")
_MIN_IMAGE_SIZE = 32
_WHO_GRADES = range(1, 5)

# Tissue intensities per sequence: (T1-like, FLAIR-like, post-contrast T1-like), before the
# per-patient gain/gamma. Values are loosely those of real scans normalised to [0, 1].
_T1, _FLAIR, _T1C = 0, 1, 2
_SKULL = np.array([0.92, 0.55, 0.92], dtype=np.float32)
# FLAIR suppresses free water, so CSF is dark in all three sequences.
_CSF = np.array([0.10, 0.06, 0.10], dtype=np.float32)
_GREY_MATTER = np.array([0.46, 0.54, 0.46], dtype=np.float32)
_WHITE_MATTER = np.array([0.66, 0.42, 0.64], dtype=np.float32)
# Vasogenic oedema is water in the white matter: dark on T1, bright on FLAIR.
_OEDEMA = np.array([0.34, 0.86, 0.38], dtype=np.float32)
# Necrosis has no blood supply, so it does not enhance after contrast.
_NECROSIS = np.array([0.18, 0.60, 0.12], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Parameter validation
# --------------------------------------------------------------------------------------------


def _require_int(name: str, value, minimum: int) -> int:
    """An ``int`` (not bool, not float) ``>= minimum``, else a ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def _parse_class(tumor_type: str, grade) -> tuple[str, int]:
    """(tumour type, WHO grade as int) or a ValueError saying what is accepted."""
    if tumor_type not in _TUMOR_TYPES:
        raise ValueError(
            f"unknown tumor type {tumor_type!r}; known types: {', '.join(_TUMOR_TYPES)}"
        )
    try:
        level = int(str(grade))
    except ValueError:
        raise ValueError(f"grade must be a WHO grade 1-4 such as '2', got {grade!r}") from None
    if level not in _WHO_GRADES:
        raise ValueError(f"grade must be a WHO grade 1-4, got {grade!r}")
    return tumor_type, level


def _validate_classes(classes) -> list[tuple[str, str]]:
    parsed = [(str(t), str(g)) for t, g in classes]
    if not parsed:
        raise ValueError("classes must name at least one (tumor_type, grade) pair")
    for tumor_type, grade in parsed:
        _parse_class(tumor_type, grade)
    duplicates = sorted({pair for pair in parsed if parsed.count(pair) > 1})
    if duplicates:
        raise ValueError(f"classes lists these (tumor_type, grade) pairs twice: {duplicates}")
    return parsed


# --------------------------------------------------------------------------------------------
# Per-patient parameters
# --------------------------------------------------------------------------------------------


def _severity(grade: int) -> float:
    """WHO grade 1..4 mapped to 0..1: the knob that makes tumours bigger and messier."""
    return (grade - 1) / 3.0


def _sample_harmonics(rng: np.random.Generator, orders, amplitude: float) -> list:
    """Random Fourier terms of an outline: (order, amplitude, phase); higher orders weaker."""
    return [
        (
            k,
            float(rng.uniform(0.3, 1.0) * amplitude / math.sqrt(k - 1)),
            float(rng.uniform(0, 2 * math.pi)),
        )
        for k in orders
    ]


def _sample_astrocytoma(grade: int, rng: np.random.Generator) -> dict:
    severity = _severity(grade)
    side = float(rng.choice([-1.0, 1.0]))
    # Polar position inside one hemisphere, in fractions of the head's semi-axes: far enough
    # from the midline to sit in a hemisphere, far enough from the skull to stay intra-axial.
    angle = rng.uniform(-1.0, 1.0)
    distance = rng.uniform(0.22, 0.42)
    return {
        "centre_fraction": (side * distance * math.cos(angle), distance * math.sin(angle)),
        "radius": rng.uniform(0.08, 0.12) + 0.18 * severity,
        "outline": _sample_harmonics(rng, range(2, 6), 0.14 + 0.22 * severity),
        "necrotic_core": rng.uniform(0.45, 0.65) if grade >= 3 else 0.0,
        "oedema_factor": 1.35 + 1.2 * severity + rng.uniform(0.0, 0.25),
        "oedema_outline": _sample_harmonics(rng, range(2, 5), 0.15),
        "heterogeneity": 0.06 + 0.27 * severity,
        # Low grade: non-enhancing, T1-dark, FLAIR-bright. High grade: enhancing rim.
        "appearance": (0.36, 0.78, 0.92 if grade >= 3 else 0.46),
        "drift": (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)),
        "confined_to": "brain",
    }


def _sample_meningioma(grade: int, rng: np.random.Generator) -> dict:
    severity = _severity(grade)
    return {
        # Any point of the convexity from one lower-lateral side over the vertex to the other;
        # the skull base (bottom centre) is left to the pituitary.
        "skull_angle": rng.uniform(-math.pi - 0.5, 0.5),
        # How far the centre sits inside the inner skull edge, in radii: the disc is cut by the
        # skull, which leaves a dome with a broad base on the bone.
        "attachment": rng.uniform(0.25, 0.5),
        "radius": rng.uniform(0.11, 0.15) + 0.12 * severity,
        "outline": _sample_harmonics(rng, range(3, 8), 0.03 + 0.5 * severity),
        "necrotic_core": 0.0,
        "oedema_factor": 1.1 + 0.5 * severity,
        "oedema_outline": _sample_harmonics(rng, range(2, 4), 0.05),
        "heterogeneity": 0.02 + 0.25 * severity,
        "appearance": (0.50, 0.62, 0.90),
        "drift_angle": rng.uniform(-0.15, 0.15),
        "confined_to": "intracranial",
    }


def _sample_pituitary(grade: int, rng: np.random.Generator) -> dict:
    severity = _severity(grade)
    return {
        "centre_fraction": (rng.uniform(-0.03, 0.03), rng.uniform(0.48, 0.6)),
        "radius": rng.uniform(0.06, 0.08) + 0.06 * severity,
        "outline": _sample_harmonics(rng, range(2, 4), 0.04),
        "necrotic_core": 0.0,
        "oedema_factor": 0.0,
        "oedema_outline": [],
        "heterogeneity": 0.02,
        "appearance": (0.56, 0.58, 0.90),
        "drift": (0.0, rng.uniform(-0.03, 0.03)),  # stays on the midline through the stack
        "confined_to": "brain",
    }


_TUMOUR_SAMPLERS = {
    "astrocytoma": _sample_astrocytoma,
    "meningioma": _sample_meningioma,
    "pituitary": _sample_pituitary,
}


def _plain(value):
    """numpy scalars -> Python numbers, recursively: plain floats keep float32 maths float32
    (a numpy float64 scalar would promote every array it touches) and print readably."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value.item() if isinstance(value, np.generic) else value


def _sample_patient_params(tumor_type: str, grade: int, rng: np.random.Generator) -> dict:
    """Everything that stays fixed across one patient's stack: anatomy, tumour, acquisition."""
    return _plain(
        {
            "head_centre": (rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)),
            "head_semi_axes": (rng.uniform(0.68, 0.8), rng.uniform(0.8, 0.9)),
            "head_rotation": rng.uniform(-0.2, 0.2),
            "skull_thickness": rng.uniform(0.04, 0.06),
            "texture_seed": int(rng.integers(2**31)),
            "tumour_seed": int(rng.integers(2**31)),
            # Fraction of the stack (|depth| below it) that cuts through the tumour.
            "tumour_extent": rng.uniform(0.6, 1.1),
            "tumour": _TUMOUR_SAMPLERS[tumor_type](grade, rng),
            # Acquisition: the nuisance a classifier must ignore.
            "gain": rng.uniform(0.55, 1.0),
            "gamma": rng.uniform(0.8, 1.25),
            "channel_gains": tuple(rng.uniform(0.9, 1.1, size=3)),
            "noise_sigma": rng.uniform(0.015, 0.045),
        }
    )


def _slice_depths(slices_per_patient: int) -> np.ndarray:
    """Depths of slice centres spread evenly over [-1, 1]; a single slice sits at 0."""
    return (2 * np.arange(slices_per_patient) + 1) / slices_per_patient - 1


def _extent_covering_half(depths: np.ndarray) -> float:
    """Smallest tumour extent that keeps a tumour on at least half of the slices."""
    needed = math.ceil(len(depths) / 2)
    return float(np.sort(np.abs(depths))[needed - 1]) + 1e-6


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _head_scale(depth: float) -> float:
    """Head cross-section shrinks toward the ends of the stack (top/bottom of the skull)."""
    return math.sqrt(1.0 - 0.3 * depth**2)


def _head_frame(image_size: int, params: dict, depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in head coordinates (x to the right, y downward, head centre at 0)."""
    axis = ((np.arange(image_size) + 0.5) * (2.0 / image_size) - 1.0).astype(np.float32)
    x, y = axis[None, :], axis[:, None]
    cx, cy = params["head_centre"]
    cos_t, sin_t = math.cos(params["head_rotation"]), math.sin(params["head_rotation"])
    scale = _head_scale(depth)
    u = ((x - cx) * cos_t + (y - cy) * sin_t) / scale
    v = (-(x - cx) * sin_t + (y - cy) * cos_t) / scale
    return u, v


def _outline_radius(u, v, centre, radius: float, harmonics) -> np.ndarray:
    """Distance from ``centre`` in units of a wobbly radius: < 1 inside the outline.

    The angular terms are only evaluated near the centre (the rest is +inf), because arctan2
    and the harmonics over the whole image would dominate the rendering time.
    """
    du, dv = u - np.float32(centre[0]), v - np.float32(centre[1])
    distance = np.hypot(du, dv)
    reach = radius * (1.0 + sum(abs(amplitude) for _, amplitude, _ in harmonics))
    near = distance < reach
    theta = np.arctan2(dv[near], du[near])
    wobble = np.ones_like(theta)
    for order, amplitude, phase in harmonics:
        wobble += np.float32(amplitude) * np.cos(order * theta + np.float32(phase))
    rho = np.full(u.shape, np.inf, dtype=np.float32)
    rho[near] = distance[near] / (np.float32(radius) * np.maximum(wobble, np.float32(0.4)))
    return rho


@functools.lru_cache(maxsize=16)
def _base_fields(seed: int, size: int, sigma: float) -> np.ndarray:
    """Two unit-variance low-pass noise fields (2, size, size), cached per patient."""
    noise = np.random.default_rng(seed).standard_normal((2, size, size), dtype=np.float32)
    fields = gaussian_filter(noise, sigma=(0, sigma, sigma), mode="wrap")
    fields /= fields.std(axis=(1, 2), keepdims=True) + np.float32(1e-12)
    fields.flags.writeable = False  # shared by every slice of the patient
    return fields


def _smooth_field(seed: int, size: int, sigma: float, depth: float) -> np.ndarray:
    """Unit-variance low-pass noise that changes smoothly with depth.

    Two fixed fields are mixed with cos/sin weights of the depth, which keeps the variance
    constant while consecutive slices look alike.
    """
    fields = _base_fields(seed, size, sigma)
    angle = depth * math.pi / 4
    return np.float32(math.cos(angle)) * fields[0] + np.float32(math.sin(angle)) * fields[1]


def _head_regions(u, v, params: dict, depth: float) -> dict:
    """Boolean maps of the head's compartments plus the radial coordinate."""
    ax, ay = params["head_semi_axes"]
    radial = np.hypot(u / ax, v / ay)  # 1 on the outer skull edge
    inner_skull = 1.0 - params["skull_thickness"]
    brain_edge = inner_skull - 0.03  # thin dark CSF gap under the bone
    brain = radial < brain_edge
    # Ventricles: two tilted ellipses beside the midline, largest in the middle of the stack.
    size = max(1.0 - 0.8 * depth**2, 0.15)
    ventricles = np.zeros_like(brain)
    for side in (-1.0, 1.0):
        du, dv = u - side * 0.11 * ax, v + 0.05 * ay
        tilt = side * 0.3
        along = -du * math.sin(tilt) + dv * math.cos(tilt)
        across = du * math.cos(tilt) + dv * math.sin(tilt)
        ventricles |= (across / (0.055 * size)) ** 2 + (along / (0.2 * size)) ** 2 < 1.0
    fissure = (np.abs(u) < 0.012) & (v < -0.35 * ay)
    return {
        "radial": radial,
        "brain_edge": brain_edge,
        "head": radial < 1.0,
        "skull": (radial < 1.0) & (radial >= inner_skull),
        "intracranial": radial < inner_skull,
        "brain": brain,
        "csf": brain & (ventricles | fissure),
    }


def _tumour_centre(tumour: dict, params: dict, radius: float, depth: float) -> tuple[float, float]:
    ax, ay = params["head_semi_axes"]
    if "skull_angle" in tumour:
        # Attached to the inner skull edge, the attachment following the skull as it shrinks.
        angle = tumour["skull_angle"] + depth * tumour["drift_angle"]
        inner = 1.0 - params["skull_thickness"]
        edge = np.array([inner * ax * math.cos(angle), inner * ay * math.sin(angle)])
        inward = -edge / np.linalg.norm(edge)
        centre = edge + inward * tumour["attachment"] * radius
        return float(centre[0]), float(centre[1])
    fu, fv = tumour["centre_fraction"]
    du, dv = tumour["drift"]
    return (fu * ax + depth * du, fv * ay + depth * dv)


def _tumour_regions(u, v, regions: dict, params: dict, depth: float, image_size: int) -> dict:
    """Tumour (incl. necrotic core), core and oedema maps; empty beyond the tumour's extent."""
    empty = np.zeros_like(regions["brain"])
    extent = params["tumour_extent"]
    if abs(depth) >= extent:
        return {"tumour": empty, "core": empty, "oedema": empty}
    tumour = params["tumour"]
    # Cross-section of a roughly spherical tumour, kept visible (>= 1.5 px) near its poles.
    cross_section = max(math.sqrt(1.0 - (depth / extent) ** 2), 0.45)
    min_radius = 1.5 * (2.0 / image_size) / _head_scale(depth)
    radius = max(tumour["radius"] * cross_section, min_radius)
    centre = _tumour_centre(tumour, params, radius, depth)
    inside = regions[tumour["confined_to"]]
    rho = _outline_radius(u, v, centre, radius, tumour["outline"])
    mask = (rho < 1.0) & inside
    if not mask.any():  # a tiny cross-section can fall between pixel centres: keep one pixel
        nearest = np.argmin(np.where(inside, rho, np.inf))
        if np.isfinite(rho.flat[nearest]):
            mask.flat[nearest] = True
    core = mask & (rho < tumour["necrotic_core"])
    oedema = empty
    if tumour["oedema_factor"] > 0:
        rho_oedema = _outline_radius(
            u, v, centre, radius * tumour["oedema_factor"], tumour["oedema_outline"]
        )
        oedema = (rho_oedema < 1.0) & regions["brain"] & ~mask
    return {"tumour": mask, "core": core, "oedema": oedema}


# --------------------------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------------------------


def _paint(sequences: np.ndarray, where: np.ndarray, values) -> None:
    """Set ``values`` (one per sequence, scalars or maps) on the pixels of ``where``."""
    for channel in range(sequences.shape[0]):
        value = values[channel]
        sequences[channel][where] = value[where] if np.ndim(value) else value


def _brain_tissue(regions: dict, params: dict, depth: float, image_size: int) -> np.ndarray:
    """Grey/white matter mix: grey at the cortex, white inside, gyri from a smooth field."""
    gyri = _smooth_field(params["texture_seed"], image_size, image_size / 40, depth)
    depth_in_brain = regions["brain_edge"] - regions["radial"]
    white = 1.0 / (1.0 + np.exp(-(12.0 * (depth_in_brain - 0.12) + 1.5 * gyri)))
    return _GREY_MATTER[:, None, None] * (1 - white) + _WHITE_MATTER[:, None, None] * white


def _tumour_intensity(tumour: dict, params: dict, depth: float, image_size: int) -> np.ndarray:
    """Per-sequence tumour intensity maps with the tumour's own heterogeneity."""
    texture = _smooth_field(params["tumour_seed"], image_size, image_size / 64, depth)
    appearance = np.asarray(tumour["appearance"], dtype=np.float32)[:, None, None]
    return appearance * (1.0 + tumour["heterogeneity"] * texture)


def _compose(tumor_regions: dict, regions: dict, params: dict, depth: float, size: int):
    """Noise-free sequences (3, H, W) before acquisition effects."""
    sequences = np.zeros((3, size, size), dtype=np.float32)
    _paint(sequences, regions["head"], _CSF)
    _paint(sequences, regions["skull"], _SKULL)
    _paint(sequences, regions["brain"], _brain_tissue(regions, params, depth, size))
    _paint(sequences, tumor_regions["oedema"], _OEDEMA)
    _paint(sequences, regions["csf"] & ~tumor_regions["oedema"], _CSF)
    _paint(
        sequences, tumor_regions["tumour"], _tumour_intensity(params["tumour"], params, depth, size)
    )
    _paint(sequences, tumor_regions["core"], _NECROSIS)
    return sequences


def _acquire(sequences: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    """Scanner effects: slight blur, per-patient gain/gamma, Rician noise; clipped to [0, 1]."""
    blurred = gaussian_filter(sequences, sigma=(0, 0.5, 0.5))
    gains = params["gain"] * np.asarray(params["channel_gains"], dtype=np.float32)[:, None, None]
    signal = gains * np.clip(blurred, 0.0, None) ** params["gamma"]
    # Magnitude images have Rician noise: the background is dim noise, never negative.
    noise = rng.standard_normal((2, *sequences.shape), dtype=np.float32)
    noise *= np.float32(params["noise_sigma"])
    return np.clip(np.hypot(signal + noise[0], noise[1]), 0.0, 1.0)


def _render_sequences(
    tumor_type: str, grade, rng: np.random.Generator, image_size: int, patient_params, depth: float
) -> tuple[np.ndarray, np.ndarray]:
    """(T1-like, FLAIR-like, post-contrast-like) float32 (3, H, W) in [0, 1] and the mask."""
    tumor_type, level = _parse_class(tumor_type, grade)
    image_size = _require_int("image_size", image_size, _MIN_IMAGE_SIZE)
    if not -1.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [-1, 1], got {depth}")
    params = _sample_patient_params(tumor_type, level, rng)
    params.update(patient_params or {})
    u, v = _head_frame(image_size, params, depth)
    regions = _head_regions(u, v, params, depth)
    tumor_regions = _tumour_regions(u, v, regions, params, depth, image_size)
    sequences = _compose(tumor_regions, regions, params, depth, image_size)
    return _acquire(sequences, params, rng), tumor_regions["tumour"]


def render_slice(
    tumor_type: str,
    grade: str,
    rng: np.random.Generator,
    image_size: int = 128,
    patient_params: dict | None = None,
    depth: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One slice: image float32 (H, W) in [0, 1], mask bool (H, W).

    The image is the post-contrast-T1-like sequence. ``patient_params`` overrides, key by key,
    the per-patient parameters otherwise drawn from ``rng`` (head shape, tumour, acquisition);
    pass the same dict for every slice of one patient so that they show the same head.
    """
    sequences, mask = _render_sequences(tumor_type, grade, rng, image_size, patient_params, depth)
    return sequences[_T1C], mask


# --------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------


def _to_pil(sequences: np.ndarray, channels: int) -> Image.Image:
    pixels = np.round(sequences * 255).astype(np.uint8)
    if channels == 1:
        return Image.fromarray(pixels[_T1C])  # uint8 (H, W) -> mode "L"
    return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))  # -> "RGB"


def _write_patient(
    patient_dir: Path,
    tumor_type: str,
    grade: str,
    rng: np.random.Generator,
    slices_per_patient: int,
    image_size: int,
    channels: int,
) -> None:
    depths = _slice_depths(slices_per_patient)
    params = _sample_patient_params(tumor_type, int(grade), rng)
    params["tumour_extent"] = max(params["tumour_extent"], _extent_covering_half(depths))
    patient_dir.mkdir(parents=True, exist_ok=True)
    for index, depth in enumerate(depths):
        sequences, mask = _render_sequences(
            tumor_type, grade, rng, image_size, params, float(depth)
        )
        _to_pil(sequences, channels).save(patient_dir / f"slice_{index:03d}.png")
        mask_pixels = mask.astype(np.uint8) * 255
        Image.fromarray(mask_pixels).save(patient_dir / f"slice_{index:03d}_mask.png")


def write_synthetic_dataset(
    out_dir,
    patients_per_class: int = 4,
    slices_per_patient: int = 8,
    image_size: int = 128,
    channels: int = 1,
    seed: int = 0,
    classes=DEFAULT_CLASSES,
    patient_prefix: str = "syn",
) -> Path:
    """Write ``OUT/<type>-g<grade>/<patient_id>/slice_<NNN>.png`` plus ``slice_<NNN>_mask.png``.

    Images are 8-bit grayscale (post-contrast-like) for ``channels=1`` or RGB = (T1-like,
    FLAIR-like, post-contrast-like) for ``channels=3``; masks are 0/255 grayscale. Patient ids
    are ``<prefix>-<type>-g<grade>-p<NNN>``. The bytes written depend only on the arguments:
    each patient draws from its own random stream keyed by (seed, type, grade, patient index),
    so a class's patients do not change when other classes are added or reordered.
    """
    patients_per_class = _require_int("patients_per_class", patients_per_class, 1)
    slices_per_patient = _require_int("slices_per_patient", slices_per_patient, 1)
    image_size = _require_int("image_size", image_size, _MIN_IMAGE_SIZE)
    seed = _require_int("seed", seed, 0)
    if _require_int("channels", channels, 1) not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if not patient_prefix or "/" in str(patient_prefix) or "\\" in str(patient_prefix):
        raise ValueError(
            f"patient_prefix must be a non-empty name without slashes, got {patient_prefix!r}"
        )
    out = Path(out_dir)
    for tumor_type, grade in _validate_classes(classes):
        level = int(grade)
        for patient in range(patients_per_class):
            patient_id = f"{patient_prefix}-{tumor_type}-g{grade}-p{patient:03d}"
            stream = [seed, _TUMOR_TYPES.index(tumor_type), level, patient]
            _write_patient(
                out / f"{tumor_type}-g{grade}" / patient_id,
                tumor_type,
                grade,
                np.random.default_rng(stream),
                slices_per_patient,
                image_size,
                channels,
            )
    return out
