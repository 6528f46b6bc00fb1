"""decode_image: what every stage sees for each bad or unusual image file."""

import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.images import DEFAULT_MAX_PIXELS, IMAGE_FAULTS, ImageDecodeError, check_image, decode_image, read_rgb
from tests.faults.builders import FAULTS, MAX_PIXELS, bomb_png, gray16, palette_alpha, rgb_array, save_rgb


def test_rgb_files_decode_unchanged(tmp_path):
    path = save_rgb(tmp_path / "a.png", 1)
    image = decode_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), rgb_array(1))
    assert check_image(path).conversion is None
    image[0, 0, 0] = 7  # writable: no shared read-only buffer (torch warns on those)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr, info = read_rgb(gray16(tmp_path / "g.png"))
    k = (np.arange(40 * 30) % 256).reshape(30, 40)
    assert info.mode == "I;16" and np.array_equal(arr, np.repeat(k[:, :, None], 3, 2))  # k·257 → k exactly
    assert "scaled" in info.conversion


def test_32_bit_and_float_grayscale(tmp_path):
    Image.fromarray(np.array([[0, 65535], [257, 32896]], np.int32)).save(tmp_path / "i.tif")  # 16-bit data in I
    assert read_rgb(tmp_path / "i.tif")[0][:, :, 0].tolist() == [[0, 255], [1, 128]]
    Image.fromarray(np.array([[-100, 100], [0, 50]], np.int32)).save(tmp_path / "n.tif")  # any other range: min-max
    assert read_rgb(tmp_path / "n.tif")[0][:, :, 0].tolist() == [[0, 255], [128, 191]]
    Image.fromarray(np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)).save(tmp_path / "f.tif")  # [0, 1] floats
    assert read_rgb(tmp_path / "f.tif")[0][:, :, 0].tolist() == [[0, 255], [128, 64]]


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "P"])
def test_modes_without_alpha_convert_like_pil(tmp_path, mode):
    source = Image.fromarray(rgb_array(3)).convert(mode)
    path = tmp_path / ("x.jpg" if mode in ("CMYK", "YCbCr") else "x.png")
    source.save(path)
    arr, info = read_rgb(path)
    with Image.open(path) as reference:
        assert np.array_equal(arr, np.asarray(reference.convert("RGB")))
    assert info.conversion == f"{info.mode} → RGB" and info.mode != "RGB"


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, :3] = [200, 100, 0]
    rgba[0, :, 3] = [0, 255, 128]  # transparent, opaque, half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr, info = read_rgb(tmp_path / "a.png")
    assert arr[0].tolist() == [[255, 255, 255], [200, 100, 0], [227, 177, 127]]  # 200·128/255 + 255·127/255 = 227.4
    assert info.conversion == "RGBA → RGB (alpha on white)"
    Image.fromarray(rgba, "RGBA").convert("LA").save(tmp_path / "la.png")
    assert read_rgb(tmp_path / "la.png")[0][0, 0].tolist() == [255, 255, 255]


def test_palette_transparency_is_composited_on_white(tmp_path):
    path = palette_alpha(tmp_path / "p.png")
    arr, info = read_rgb(path)
    with Image.open(path) as im:
        transparent = np.asarray(im) == 0
    assert transparent.any() and (arr[transparent] == 255).all() and info.conversion.startswith("P → RGB (alpha")


def test_png_named_jpg_decodes_and_is_flagged(tmp_path):
    save_rgb(tmp_path / "x.jpg", 2, "PNG")
    info = check_image(tmp_path / "x.jpg")
    assert (info.format, info.suffix_mismatch) == ("PNG", True)
    assert np.array_equal(decode_image(tmp_path / "x.jpg").permute(1, 2, 0).numpy(), rgb_array(2))
    assert not check_image(save_rgb(tmp_path / "y.JPEG", 2, "JPEG")).suffix_mismatch


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.kind in IMAGE_FAULTS], ids=lambda f: f.kind + ":" + f.file)
def test_bad_files_raise_their_kind(tmp_path, fault):
    path = tmp_path / fault.file
    path.parent.mkdir(parents=True, exist_ok=True)
    fault.build(path)
    with pytest.raises(ImageDecodeError, match=path.name) as e:
        decode_image(path, MAX_PIXELS)
    assert e.value.kind == fault.kind


def test_absent_file_is_unreadable(tmp_path):
    with pytest.raises(ImageDecodeError) as e:
        decode_image(tmp_path / "nope.jpg")
    assert e.value.kind == "unreadable"


@pytest.mark.parametrize("side", [30_000, 10_000])  # above twice PIL's limit (its error) / between (its warning)
def test_decompression_bomb_is_refused_from_the_header(tmp_path, side):
    path = bomb_png(tmp_path / "bomb.png", side, side)
    assert path.stat().st_size < 200
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        with pytest.raises(ImageDecodeError) as e:
            decode_image(path)
    assert e.value.kind == "decompression_bomb" and time.perf_counter() - start < 1.0  # nothing was decoded


def test_max_pixels_is_inclusive(tmp_path):
    path = save_rgb(tmp_path / "a.png", 1)
    assert decode_image(path, max_pixels=40 * 30).shape == (3, 30, 40)
    with pytest.raises(ImageDecodeError, match="1200 pixels exceeds max_pixels 1199"):
        decode_image(path, max_pixels=40 * 30 - 1)
    assert DEFAULT_MAX_PIXELS == 89_478_485


def test_decode_error_survives_a_dataloader_worker(tmp_path):
    """Workers re-raise an exception from its message alone; the CLI catches it as a ValueError."""
    from pipeline.images import ResizedImages

    (tmp_path / "bad.png").write_bytes(b"\x89PNG nope")
    loader = torch.utils.data.DataLoader(ResizedImages([tmp_path / "bad.png"], 8), num_workers=1)
    with pytest.raises(ImageDecodeError, match="bad.png"):
        next(iter(loader))
    assert issubclass(ImageDecodeError, ValueError)
