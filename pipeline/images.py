"""Decoding image files into tensors, once, for every stage that reads pixels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ImageDecodeError(RuntimeError):
    pass


def decode_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to uint8 RGB [3, H, W]."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many kinds for bad files
        raise ImageDecodeError(f"cannot decode image {path}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


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


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly or recursively under `folder`, sorted for a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
