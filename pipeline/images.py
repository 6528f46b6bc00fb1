"""Decoding image files into tensors, once, for every stage that reads pixels.

`decode_image` is the only way pixels enter the pipeline, so every stage sees the same pixels for a file:
- any mode becomes 8-bit RGB: CMYK, YCbCr, grayscale (1, L, I;16, I, F), palette (P) convert; 16-bit and
  32-bit grayscale is scaled to 0..255 (PIL's own `convert` clips it to mostly white); images with alpha
  (RGBA, LA, PA, P with transparency) are composited on white, what a viewer shows, because the colour
  stored under transparent pixels is arbitrary;
- only the formats of IMAGE_SUFFIXES are opened, whatever the file's extension: a PNG named `.jpg`
  decodes, an EPS or PSD named `.jpg` does not (PIL would run Ghostscript for EPS);
- a file declaring more than `max_pixels` pixels is refused from its header, before any pixel is decoded
  (a decompression bomb: a small file that would need gigabytes), never a crash or a hang.

Failures raise ImageDecodeError with a stable `kind` (IMAGE_FAULTS); `check_image` decodes a file the same
way and says what was converted, so `prepare` can report it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# PIL format name → the extensions a file of that format may carry. MPO is a multi-picture JPEG (cameras).
FORMAT_SUFFIXES = {"JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "MPO": (".jpg", ".jpeg", ".mpo"), "PNG": (".png",),
                   "BMP": (".bmp", ".dib"), "WEBP": (".webp",), "GIF": (".gif",), "TIFF": (".tif", ".tiff")}
OPEN_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")  # JPEG's opener also yields MPO
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's default MAX_IMAGE_PIXELS (its warning threshold, ~ 9459²)
IMAGE_FAULTS = ("zero_byte", "unreadable", "truncated", "decompression_bomb", "unsupported_mode")
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_BACKGROUND = 255  # alpha is composited on white


class ImageDecodeError(ValueError):
    """An image file that cannot become RGB pixels; `kind` is one of IMAGE_FAULTS.

    Constructible from the message alone, so DataLoader workers can re-raise it in the main process.
    """

    def __init__(self, message: str, kind: str = "unreadable"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageInfo:
    format: str  # PIL format name, e.g. JPEG
    mode: str  # mode as stored, before conversion
    size: tuple[int, int]  # width, height
    conversion: str | None  # e.g. "CMYK → RGB"; None when the file already is 8-bit RGB
    suffix_mismatch: bool  # the extension does not name the format (decoded anyway)


def _scaled_u8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Grayscale of more than 8 bits → uint8 [H, W], scaled rather than clipped."""
    if mode.startswith("I;16") or (mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535):
        # 16-bit (PIL's `I` holds 16-bit PNG/TIFF data too): 65535 → 255, exact for multiples of 257
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    x = arr.astype(np.float64)
    if mode == "F" and x.size and x.min() >= 0.0 and x.max() <= 1.0:
        return np.round(x * 255).astype(np.uint8)  # float images in [0, 1]
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(x.shape, np.uint8)
    return np.round((x - lo) * 255.0 / (hi - lo)).astype(np.uint8)  # any other range: min-max


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, str | None]:
    """A loaded PIL image → (uint8 [H, W, 3], what was converted or None)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8), None
    if mode.startswith("I") or mode == "F":
        gray = _scaled_u8(np.asarray(im), mode)
        return np.repeat(gray[:, :, None], 3, axis=2), f"{mode} → RGB (scaled to 8 bits)"
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[:, :, 3:] / 255.0
        rgb = np.round(rgba[:, :, :3] * alpha + _BACKGROUND * (1.0 - alpha)).astype(np.uint8)
        return rgb, f"{mode} → RGB (alpha on white)"
    return np.asarray(im.convert("RGB"), dtype=np.uint8), f"{mode} → RGB"


def read_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageInfo]:
    """Fully decode an image file → (uint8 [H, W, 3], ImageInfo); raises ImageDecodeError with a kind."""
    path = Path(path)
    try:
        if os.stat(path).st_size == 0:
            raise ImageDecodeError(f"cannot decode image {path}: empty file (0 bytes)", "zero_byte")
    except OSError as e:
        raise ImageDecodeError(f"cannot decode image {path}: {e}", "unreadable") from e
    try:
        # Our own limit decides (below); PIL's warning for the same condition is noise here. Above twice its
        # limit PIL refuses in open() with DecompressionBombError, handled below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=OPEN_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"cannot decode image {path}: {e}", "decompression_bomb") from e
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError…: not an image we open
        raise ImageDecodeError(f"cannot decode image {path}: {e}", "unreadable") from e
    with im:
        width, height = im.size
        if width * height > max_pixels:  # refused from the header: nothing has been decoded yet
            raise ImageDecodeError(f"cannot decode image {path}: {width}x{height} = {width * height} pixels "
                                   f"exceeds max_pixels {max_pixels} (decompression bomb?)", "decompression_bomb")
        try:
            im.load()
        except Exception as e:  # the header was fine, the pixel data is cut short or corrupt
            raise ImageDecodeError(f"cannot decode image {path}: {e}", "truncated") from e
        try:
            arr, conversion = _to_rgb(im)
        except (ValueError, OSError, TypeError) as e:
            raise ImageDecodeError(f"cannot decode image {path}: mode {im.mode} ({e})", "unsupported_mode") from e
        fmt = im.format or ""
        info = ImageInfo(format=fmt, mode=im.mode, size=(width, height), conversion=conversion,
                         suffix_mismatch=path.suffix.lower() not in FORMAT_SUFFIXES.get(fmt, ()))
    return np.array(arr, dtype=np.uint8, order="C"), info  # a writable copy: torch.from_numpy shares it


def decode_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode an image file to uint8 RGB [3, H, W] (conversions in the module docstring)."""
    arr, _ = read_rgb(path, max_pixels)
    return torch.from_numpy(arr).permute(2, 0, 1)


def check_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Decode a file exactly as decode_image does and return what was found (raises ImageDecodeError)."""
    return read_rgb(path, max_pixels)[1]


@dataclass(frozen=True)
class CheckResult:
    index: int
    info: ImageInfo | None
    kind: str | None  # an IMAGE_FAULTS kind when the file cannot be decoded
    detail: str


class CheckedImages(Dataset):
    """Item i: CheckResult of the i-th path; failures are returned, not raised, so one bad file in a
    DataLoader worker never stops the others."""

    def __init__(self, paths: Sequence[str | Path], max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths, self.max_pixels = list(paths), max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> CheckResult:
        try:
            return CheckResult(i, check_image(self.paths[i], self.max_pixels), None, "")
        except ImageDecodeError as e:
            return CheckResult(i, None, e.kind, str(e))


def resize_u8(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] → uint8 [3, size, size] (antialiased; the aspect is not kept, as CLIP's squash)."""
    if image.shape[-2:] == (size, size):
        return image
    x = F.interpolate(image.unsqueeze(0).float(), size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)
    return x.squeeze(0).round().clamp(0, 255).to(torch.uint8)


class ResizedImages(Dataset):
    """Item i: (i, uint8 [3, size, size]) of the i-th path."""

    def __init__(self, paths: Sequence[str | Path], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return i, resize_u8(decode_image(self.paths[i]), self.size)


class ResizedOrFaulty(Dataset):
    """Item i: (i, uint8 [3, size, size], fault kind, detail) of the i-th path. A file that cannot be decoded
    gives a zero image, its IMAGE_FAULTS kind and the message ('' and '' when fine): one bad file in a
    folder never stops the others."""

    def __init__(self, paths: Sequence[str | Path], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, resize_u8(decode_image(self.paths[i]), self.size), "", ""
        except ImageDecodeError as e:
            return i, torch.zeros(3, self.size, self.size, dtype=torch.uint8), e.kind, str(e)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly or recursively under `folder`, sorted for a stable order."""
    return list_files(folder)[0]


def list_files(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) directly or recursively under `folder`, each sorted for a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return ([p for p in files if p.suffix.lower() in IMAGE_SUFFIXES],
            [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES])


def image_size_of(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the file's header alone, or None where it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 — any unreadable file is reported by decode_image, not here
        return None
