import numpy as np
import pytest
import torch

from pipeline.cut import (
    CutSettings,
    best_view_boxes,
    cdul_aggregate,
    cut_views,
    fuse_crops,
    grid_boxes,
    random_crop_boxes,
    view_boxes,
)


def test_grid_boxes_tile_the_image():
    b = grid_boxes(3)
    assert b.shape == (9, 4)
    area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum()
    assert area == pytest.approx(1.0)
    assert b[0].tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3])
    assert b[5].tolist() == pytest.approx([2 / 3, 1 / 3, 1, 2 / 3])


def test_random_crops_keep_area_fraction_and_stay_inside():
    b = random_crop_boxes(np.random.default_rng(0), 500, (0.1, 0.3), (0.75, 4 / 3))
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    assert (area >= 0.1 - 1e-6).all() and (area <= 0.3 + 1e-6).all()
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 1 + 1e-6).all()
    aspect = (b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1])
    assert (aspect >= 0.75 - 1e-4).all() and (aspect <= 4 / 3 + 1e-4).all()


def _covers(boxes: np.ndarray, x: float, y: float) -> np.ndarray:
    return (boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])


@pytest.mark.parametrize("placement", ["centre", "corner"])
def test_random_crops_of_either_placement_keep_area_and_stay_inside(placement):
    b = random_crop_boxes(np.random.default_rng(0), 500, (0.1, 0.2), (0.75, 4 / 3), placement)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    assert (area >= 0.1 - 1e-6).all() and (area <= 0.2 + 1e-6).all()
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 1 + 1e-6).all()


def test_centre_placement_captures_objects_in_corners_as_often_as_in_the_centre():
    even = random_crop_boxes(np.random.default_rng(0), 30000, (0.1, 0.2), (0.75, 4 / 3), "centre")
    biased = random_crop_boxes(np.random.default_rng(0), 30000, (0.1, 0.2), (0.75, 4 / 3), "corner")

    def whole(boxes, x0, y0, side=0.2):
        """Share of images (30 crops each) where some crop holds the whole object at (x0, y0)."""
        inside = (boxes[:, 0] <= x0) & (boxes[:, 1] <= y0) & (boxes[:, 2] >= x0 + side) & (boxes[:, 3] >= y0 + side)
        return inside.reshape(-1, 30).any(1).mean()

    corner, centre = whole(even, 0.0, 0.0), whole(even, 0.4, 0.4)
    assert corner > 0.6 and abs(corner - centre) < 0.05, (corner, centre)
    assert whole(biased, 0.0, 0.0) < 0.01 and whole(biased, 0.4, 0.4) > 0.9  # the centre-biased sampler
    # every pixel is covered; the corner one a quarter as often as the centre (w/2 vs w on each axis)
    ratio = _covers(even, 0.02, 0.02).mean() / _covers(even, 0.5, 0.5).mean()
    assert 0.2 < ratio < 0.4 and _covers(biased, 0.02, 0.02).mean() < 0.01


def test_corner_placement_is_the_original_sampler():
    """`corner` draws exactly the boxes of the sampler every earlier score store was made with."""
    import math

    def original(rng, n, area, aspect):
        out = []
        for _ in range(n):
            rho = rng.uniform(*area)
            r = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
            w = min(1.0, math.sqrt(rho * r))
            h = min(1.0, rho / w)
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            out.append((x0, y0, x0 + w, y0 + h))
        return np.array(out, np.float32)

    a = random_crop_boxes(np.random.default_rng(5), 50, (0.1, 0.3), (0.75, 4 / 3), "corner")
    assert np.array_equal(a, original(np.random.default_rng(5), 50, (0.1, 0.3), (0.75, 4 / 3)))
    with pytest.raises(ValueError, match="placement"):
        CutSettings(placement="middle")


def test_best_view_boxes_name_each_class_s_strongest_local_view():
    tiles = np.zeros((1, 4, 2), np.float32)
    tiles[0, 3, 0] = 5.0  # class 0: bottom-right tile
    crops = np.zeros((1, 2, 2), np.float32)
    crops[0, 1, 1] = 7.0  # class 1: the second crop
    crop_boxes = np.array([[[0, 0, 0.3, 0.3], [0.1, 0.2, 0.4, 0.6]]], np.float32)
    out = best_view_boxes(tiles, crops, crop_boxes)
    assert out[0, 0].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert out[0, 1].tolist() == pytest.approx([0.1, 0.2, 0.4, 0.6])


def test_view_boxes_seeded():
    s = CutSettings(grid=2, crops=5)
    a, fa = view_boxes(np.random.default_rng(1), s)
    b, _ = view_boxes(np.random.default_rng(1), s)
    assert a.shape == (1 + 4 + 5, 4) and np.array_equal(a, b) and not fa.any()
    assert a[0].tolist() == [0, 0, 1, 1]


def test_cut_views_slices_the_decoded_image():
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    img[:, :4, :4] = 255  # top-left quadrant white
    boxes = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1]], np.float32)
    v = cut_views(img, boxes, np.zeros(3, bool), 4)
    assert v.shape == (3, 3, 4, 4)
    assert torch.allclose(v[0], torch.ones_like(v[0])) and torch.allclose(v[1], torch.zeros_like(v[1]))
    assert v[2].mean().item() == pytest.approx(0.25, abs=0.02)


def test_fuse_crops_is_eq7_on_hand_made_input():
    z0 = np.array([[3.0, -4.0, -2.0]])
    crops = np.array([[[1.0, -5.0, 0.5], [2.0, -1.0, -3.0]]])
    out = fuse_crops(z0, crops, alpha=0.1)
    assert out[0].tolist() == pytest.approx([3.0, -1.1, 0.4])
    assert fuse_crops(z0, crops[:, :0], 0.1).tolist() == z0.tolist()


def test_cdul_aggregate_on_hand_made_input():
    def logit(p):
        return np.log(p / (1 - p))

    g = logit(np.array([[0.2, 0.6]]))
    local = logit(np.array([[[0.7, 0.1], [0.3, 0.4]]]))  # class 0: max .7 ≥ ζ → α; class 1: max .4 < ζ → β=.1
    out = 1 / (1 + np.exp(-cdul_aggregate(g, local, zeta=0.5)))
    assert out[0].tolist() == pytest.approx([0.5 * (0.2 + 0.7), 0.5 * (0.6 + 0.1)], abs=1e-5)


def test_bad_crop_area_rejected():
    with pytest.raises(ValueError, match="crop_area"):
        CutSettings(crop_area=(0.5, 0.2))
