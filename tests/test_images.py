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
