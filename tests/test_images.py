import numpy as np
import pytest
import torch
from PIL import Image

from zoo.images import save_grid, to_uint8, write_ppm


def test_write_ppm_rgb(tmp_path):
    batch = torch.tensor([[[[-1.0, 1.0]], [[0.0, 1.0]], [[1.0, -1.0]]]])  # (1, 3, 1, 2)
    p = write_ppm(tmp_path / "a.ppm", torch.cat([batch, -batch]))
    assert p.read_text() == "P3\n2 1\n255\n0 128 255 255 255 0\n"


def test_write_pgm_gray(tmp_path):
    p = write_ppm(tmp_path / "a.pgm", np.array([[[[-1.0], [0.5]]]], dtype=np.float32))  # (1, 1, 2, 1)
    assert p.read_text() == "P2\n1 2\n255\n0\n191\n"


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.full((1, 3, 2, 2), np.nan, np.float32), "non-finite"),
        (np.zeros((3, 2, 2), np.float32), "shape"),
        (np.zeros((1, 2, 2, 2), np.float32), "2 in shape"),
        (np.zeros((1, 3, 2, 2), np.uint8), "floating"),
    ],
)
def test_bad_batches_write_nothing(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        write_ppm(tmp_path / "x.ppm", bad)
    with pytest.raises(ValueError, match=match):
        save_grid(tmp_path / "x.png", bad)
    assert list(tmp_path.iterdir()) == []


def test_save_grid(tmp_path):
    batch = np.random.default_rng(0).uniform(-1, 1, (5, 3, 4, 6)).astype(np.float32)
    p = save_grid(tmp_path / "g.png", batch, nrow=3, padding=1)
    img = np.asarray(Image.open(p))
    assert img.shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    np.testing.assert_array_equal(img[1:5, 1:7], to_uint8(batch)[0])
    np.testing.assert_array_equal(img[6:10, 8:14], to_uint8(batch)[4])
    with pytest.raises(ValueError, match="suffix"):
        save_grid(tmp_path / "g.unknownext", batch)


def test_grids_scale_up_and_sit_side_by_side(tmp_path):
    from zoo.images import grid_array, save_side_by_side

    x = np.zeros((4, 1, 3, 3), np.float32)
    x[1] = 1.0
    g = grid_array(x, scale=2, pad_value=96)
    assert g.shape == (2 + 2 * (6 + 2), 2 + 2 * (6 + 2), 1)
    assert g[0, 0, 0] == 96 and (g[2:8, 2:8] == 128).all() and (g[2:8, 10:16] == 255).all()  # 0.0 -> 128, nearest x2
    path = save_side_by_side(tmp_path / "s.png", [x, x[:1]], scale=2, gap=5)
    img = np.asarray(Image.open(path))
    assert img.shape == (18, 18 + 5 + 10) and (img[:, 18:23] == 255).all()  # the white gap between the two grids
