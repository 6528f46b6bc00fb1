"""Bad input built for real on disk: every kind of issue 6's list, as small files and dataset rows."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (40, 30)  # width, height of every small test image (below the tests' max_pixels)


def rgb_array(seed: int = 0, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Smooth, seeded colours (JPEG keeps them close): uint8 [H, W, 3]."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, 3)
    return np.clip(base + np.stack([x * 2, y * 2, (x + y)], axis=2), 0, 255).astype(np.uint8)


def save_rgb(path: Path, seed: int = 0, fmt: str | None = None, size: tuple[int, int] = SIZE) -> Path:
    Image.fromarray(rgb_array(seed, size)).save(path, format=fmt)
    return path


def truncated(path: Path, fmt: str) -> Path:
    """A valid header followed by half the pixel data."""
    save_rgb(path, 3, fmt, size=(120, 90))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def bomb_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A ~100-byte PNG whose header declares width × height RGB pixels (30000² needs 2.7 GB decoded)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def gray16(path: Path) -> Path:
    """16-bit grayscale PNG (mode I;16) with values k·257, which scale exactly to k in 8 bits."""
    k = (np.arange(SIZE[0] * SIZE[1]) % 256).reshape(SIZE[1], SIZE[0]).astype(np.uint16)
    Image.fromarray(k * 257).save(path)
    return path


def palette_alpha(path: Path) -> Path:
    """Palette PNG with a transparent colour (index 0)."""
    im = Image.fromarray(rgb_array(5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.save(path, transparency=0)
    return path


def mode_image(mode: str, fmt: str | None = None) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        rgba = np.dstack([rgb_array(7), np.linspace(0, 255, SIZE[0] * SIZE[1]).reshape(SIZE[1], SIZE[0])])
        Image.fromarray(rgba.astype(np.uint8), "RGBA").convert(mode).save(path, format=fmt)
        return path
    return build


@dataclass(frozen=True)
class Fault:
    name: str  # the row of the fault table
    file: str  # path relative to the dataset root, as listed in the labels table
    build: Callable[[Path], object] | None  # writes the file (None: nothing written)
    labels: str
    split: str
    kind: str | None  # expected `kind` in reports/data_issues.parquet (None: no issue)
    action: str | None  # expected action


def _write(data: bytes) -> Callable[[Path], object]:
    return lambda p: p.write_bytes(data)


# Every image kind of issue 6 in one folder dataset (classes circle, square, triangle, cross; max_pixels 100,000).
# "cross" is only on a test image: a class with no positive train image.
FAULTS = [
    Fault("good JPEG", "ok/a.jpg", lambda p: save_rgb(p, 1), "circle", "train", None, None),
    Fault("good PNG", "ok/b.png", lambda p: save_rgb(p, 2), "square", "train", None, None),
    Fault("good test image", "ok/c.png", lambda p: save_rgb(p, 4), "triangle;cross", "test", None, None),
    Fault("CMYK JPEG", "modes/cmyk.jpg", mode_image("CMYK", "JPEG"), "circle", "train", "converted_mode",
          "converted"),
    Fault("grayscale L", "modes/gray.png", mode_image("L"), "square", "train", "converted_mode", "converted"),
    Fault("grayscale + alpha LA", "modes/gray_alpha.png", mode_image("LA"), "triangle", "train", "converted_mode",
          "converted"),
    Fault("palette P", "modes/palette.gif", mode_image("P", "GIF"), "circle", "train", "converted_mode", "converted"),
    Fault("palette + transparency", "modes/palette_alpha.png", palette_alpha, "square", "test", "converted_mode",
          "converted"),
    Fault("16-bit grayscale I;16", "modes/gray16.png", gray16, "triangle", "train", "converted_mode", "converted"),
    Fault("RGBA", "modes/rgba.png", mode_image("RGBA"), "circle;square", "train", "converted_mode", "converted"),
    Fault("PNG named .jpg", "bad/png_named.jpg", lambda p: save_rgb(p, 6, "PNG"), "square", "train",
          "wrong_extension", "kept"),
    Fault("zero-byte file", "bad/zero.jpg", _write(b""), "circle", "train", "zero_byte", "excluded"),
    Fault("random bytes named .jpg", "bad/garbage.jpg",
          _write(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes()), "circle", "train",
          "unreadable", "excluded"),
    Fault("text file named .jpg", "bad/text.jpg", _write(b"not an image\n"), "square", "train", "unreadable",
          "excluded"),
    Fault("EPS named .jpg (never run)", "bad/eps.jpg", _write(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n"),
          "square", "train", "unreadable", "excluded"),
    Fault("truncated JPEG", "bad/truncated.jpg", lambda p: truncated(p, "JPEG"), "circle", "train", "truncated",
          "excluded"),
    Fault("truncated PNG", "bad/truncated.png", lambda p: truncated(p, "PNG"), "square", "train", "truncated",
          "excluded"),
    Fault("30000×30000 PNG header (bomb)", "bad/bomb.png", bomb_png, "circle", "train", "decompression_bomb",
          "excluded"),
    Fault("400×300 image > max_pixels", "bad/large.png", lambda p: save_rgb(p, 8, size=(400, 300)), "circle",
          "train", "decompression_bomb", "excluded"),
    Fault("listed but absent", "bad/missing.jpg", None, "circle", "train", "absent", "excluded"),
    Fault("path escaping the root", "../outside.jpg", lambda p: save_rgb(p, 9), "circle", "train",
          "path_escapes_root", "excluded"),
    Fault("duplicate image id (its second row)", "ok/a.jpg", None, "square", "train", "duplicate_id", "excluded"),
    Fault("label of an unknown class", "bad/zebra.png", lambda p: save_rgb(p, 10), "circle;zebra", "train",
          "unknown_class", "excluded"),
]
CLASSES = ["circle", "square", "triangle", "cross"]
MAX_PIXELS = 100_000


def folder_dataset(base: Path, faults: list[Fault] = FAULTS) -> tuple[Path, Path]:
    """Write the images under base/images and the labels table base/labels.csv; returns (root, table)."""
    root = base / "images"
    root.mkdir(parents=True)
    for f in faults:
        if f.build is not None:
            path = root / f.file
            path.parent.mkdir(parents=True, exist_ok=True)
            f.build(path)
    table = base / "labels.csv"
    table.write_text("image,labels,split\n" + "".join(f"{f.file},{f.labels},{f.split}\n" for f in faults))
    return root, table
