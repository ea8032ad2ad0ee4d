"""Rendered images (PS3.18 8.3.5, 10.4.1.1.3): one frame -> 8-bit PNG or JPEG.

Grayscale: Modality LUT (RescaleSlope/Intercept), then the VOI window from the ``window``
query parameter (center, width, LINEAR | LINEAR_EXACT | SIGMOID), else the object's first
WindowCenter/WindowWidth, else the frame's value range; MONOCHROME1 is inverted so that
the result is always displayed as MONOCHROME2. Colour (RGB, YBR decoded to RGB) is passed
through (scaled to 8 bits when stored with more). ``viewport`` crops (sx, sy, sw, sh) and
scales to fit (vw, vh) keeping the aspect ratio; a negative sw or sh flips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
THUMBNAIL_SIZE = 128


class RenderError(ValueError):
    """Bad rendering parameters (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True, slots=True)
class Viewport:
    """Output size and optional source region (PS3.18 8.3.5.1.3)."""

    width: int
    height: int
    region: tuple[float, float, float, float] | None = None  # sx, sy, sw, sh


@dataclass(frozen=True, slots=True)
class RenderParams:
    """Parsed rendering query parameters."""

    media_type: str = "image/png"
    quality: int = 90
    window: Window | None = None
    viewport: Viewport | None = None


def _numbers(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise RenderError(f"{name} must be comma-separated numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise RenderError(f"{name} must be finite numbers (no NaN or infinity)")
    return values


def parse_window(text: str | None) -> Window | None:
    """``center,width[,function]``."""
    if not text:
        return None
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise RenderError("window is center,width[,function]")
    center, width = _numbers(",".join(parts[:2]), "window")
    function = parts[2].strip().upper() if len(parts) == 3 else "LINEAR"
    if function not in WINDOW_FUNCTIONS:
        raise RenderError(f"window function must be one of {', '.join(WINDOW_FUNCTIONS)}")
    if width <= 0 or (width < 1 and function == "LINEAR"):
        raise RenderError("window width must be positive (at least 1 for LINEAR)")
    return Window(center, width, function)


def parse_viewport(text: str | None) -> Viewport | None:
    """``vw,vh[,sx,sy,sw,sh]``."""
    if not text:
        return None
    values = _numbers(text, "viewport")
    if len(values) not in (2, 6):
        raise RenderError("viewport is vw,vh[,sx,sy,sw,sh]")
    vw, vh = int(values[0]), int(values[1])
    if not (0 < vw <= 4096 and 0 < vh <= 4096):
        raise RenderError("viewport width and height must be 1..4096")
    region = (values[2], values[3], values[4], values[5]) if len(values) == 6 else None
    if region is not None and (region[2] == 0 or region[3] == 0):
        raise RenderError("viewport source width and height must not be 0")
    return Viewport(vw, vh, region)


def parse_quality(text: str | None) -> int:
    """JPEG quality 1..100 (default 90)."""
    if text is None or text == "":
        return 90
    try:
        quality = int(text)
    except ValueError:
        raise RenderError("quality must be an integer 1..100") from None
    if not 1 <= quality <= 100:
        raise RenderError("quality must be an integer 1..100")
    return quality


def _first(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        if not value:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _voi(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2: VOI LUT functions, output 0..255."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "LINEAR_EXACT":
        out = ((values - (c - w / 2)) / w) * 255.0
    else:
        out = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(out, 0, 255)


def to_8bit(ds: Dataset, pixels: np.ndarray, window: Window | None) -> np.ndarray:
    """Apply Modality LUT, VOI window and MONOCHROME1 inversion; uint8 (H, W) or (H, W, 3)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3:  # colour, already RGB
        if pixels.dtype != np.uint8:
            top = float(2 ** int(ds.get("BitsStored", 8) or 8) - 1)
            pixels = np.clip(pixels.astype(np.float64) * 255.0 / top, 0, 255)
        return pixels.astype(np.uint8)
    values = pixels.astype(np.float64)
    slope = _first(ds, "RescaleSlope")
    intercept = _first(ds, "RescaleIntercept")
    values = values * (1.0 if slope is None else slope) + (intercept or 0.0)
    if window is None:
        center, width = _first(ds, "WindowCenter"), _first(ds, "WindowWidth")
        if center is not None and width is not None and width >= 1:
            window = Window(center, width)
        else:
            low, high = float(values.min()), float(values.max())
            window = Window((low + high) / 2 + 0.5, max(high - low + 1, 1), "LINEAR")
    out = _voi(values, window)
    if photometric == "MONOCHROME1":
        out = 255.0 - out
    rounded: np.ndarray = np.rint(out)
    return rounded.astype(np.uint8)


def _apply_viewport(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    if viewport is None:
        return image
    if viewport.region is not None:
        sx, sy, sw, sh = viewport.region
        left, right = sorted((sx, sx + sw))
        top, bottom = sorted((sy, sy + sh))
        # within the image: a region beyond it would allocate its whole (padded) size
        box = (
            max(0, int(left)),
            max(0, int(top)),
            min(image.width, int(right)),
            min(image.height, int(bottom)),
        )
        if box[0] >= box[2] or box[1] >= box[3]:
            raise RenderError("the viewport source region lies outside the image")
        image = image.crop(box)
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def render(ds: Dataset, pixels: np.ndarray, params: RenderParams) -> bytes:
    """Encode one decoded frame as PNG or JPEG per ``params``."""
    image = Image.fromarray(to_8bit(ds, pixels, params.window))
    image = _apply_viewport(image, params.viewport)
    out = BytesIO()
    if params.media_type == "image/jpeg":
        image.save(out, format="JPEG", quality=params.quality)
    else:
        image.save(out, format="PNG")
    return out.getvalue()
