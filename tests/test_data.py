"""Data sources on small data the tests make themselves, and the safe CIFAR unpickler."""

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.training.data import (
    Cifar10,
    ImageFolder,
    SyntheticImages,
    UnsafePickleError,
    open_dataset,
    restricted_load,
)


def test_synthetic_is_deterministic_and_in_range():
    a, b = SyntheticImages(12, seed=3), SyntheticImages(12, seed=3)
    x = a.batch(range(8))
    assert x.shape == (8, 3, 12, 12) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, b.batch(range(8)), rtol=0, atol=0)
    assert (x[0] - x[1]).abs().max() > 0.1
    assert (SyntheticImages(12, seed=4)[0] - x[0]).abs().max() > 0.1
    assert SyntheticImages(33)[5].shape == (3, 33, 33)
    held = open_dataset("synthetic", 12, train=False, seed=3)
    assert (held[0] - x[0]).abs().max() > 0.1  # held-out data is not the training data


def _cifar_batch(n, offset):
    data = (np.arange(n * 3072, dtype=np.int64).reshape(n, 3072) + offset) % 256
    return {b"batch_label": b"test", b"labels": [i % 10 for i in range(n)], b"data": data.astype(np.uint8)}


@pytest.fixture
def cifar_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(4, i), protocol=2))
    (root / "test_batch").write_bytes(pickle.dumps(_cifar_batch(3, 100), protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    return root


def test_cifar_directory(cifar_dir):
    ds = Cifar10(cifar_dir.parent)
    assert len(ds) == 20 and ds.labels[:4].tolist() == [0, 1, 2, 3]
    x = ds.batch([0])
    assert x.shape == (1, 3, 32, 32)
    raw = _cifar_batch(4, 1)[b"data"][0].reshape(3, 32, 32)  # CIFAR rows are R plane, G plane, B plane
    np.testing.assert_allclose(x[0].numpy(), raw / 127.5 - 1, atol=1e-6)
    assert len(Cifar10(cifar_dir, train=False)) == 3
    assert len(open_dataset(f"cifar10:{cifar_dir}", 32)) == 20


def test_cifar_archive(cifar_dir, tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_dir, arcname="cifar-10-batches-py")
    ds = Cifar10(archive)
    torch.testing.assert_close(ds.batch([5, 7]), Cifar10(cifar_dir).batch([5, 7]))


def test_cifar_md5_and_format_errors(cifar_dir, tmp_path):
    with pytest.raises(ValueError, match=r"data_batch_1 has MD5 .* published CIFAR-10 file has c99cafc1"):
        Cifar10(cifar_dir, verify_md5=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Cifar10(tmp_path / "nope")
    (cifar_dir / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        Cifar10(cifar_dir)
    with pytest.raises(ValueError, match="size=16"):
        open_dataset(f"cifar10:{cifar_dir}", 16)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))  # would create a file if it were ever called


def test_malicious_pickle_is_refused_and_never_runs(cifar_dir, tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(str(target)), b"labels": []}, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (builtins|io)\.open"):
        restricted_load(payload)
    (cifar_dir / "data_batch_2").write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="data_batch_2"):
        Cifar10(cifar_dir)
    assert not target.exists()
    import os

    with pytest.raises(UnsafePickleError, match="posix.system|os.system"):
        restricted_load(pickle.dumps(os.system))


def _png(path, w, h, color):
    Image.new("RGB", (w, h), color).save(path)


def test_image_folder(tmp_path, caplog):
    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    _png(root / "cats" / "a.png", 20, 10, (255, 0, 0))
    im = Image.new("RGB", (30, 10), (0, 0, 255))
    im.paste((0, 255, 0), (10, 0, 20, 10))  # a green middle third: the centre crop keeps it
    im.save(root / "dogs" / "b.png")
    (root / "dogs" / "broken.jpg").write_bytes(b"not an image")
    _png(root / "dogs" / "huge.png", 200, 200, (0, 0, 0))
    with caplog.at_level("WARNING"):
        ds = ImageFolder(root, 8, max_pixels=10_000)
    assert len(ds) == 2 and ds.skipped == {"unreadable": 1, "empty": 0, "too large": 1, "unknown pixel range": 0,
                                          "unreadable folders": 0}
    assert "1 unreadable" in caplog.text and "1 too large" in caplog.text
    x = ds.batch([0, 1])
    assert x.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(x[0, :, 4, 4].numpy(), [1, -1, -1], atol=1e-2)
    np.testing.assert_allclose(x[1, :, 4, 4].numpy(), [-1, 1, -1], atol=1e-2)  # centre of the green stripe


def test_image_folder_flat_and_empty(tmp_path):
    _png(tmp_path / "x.png", 8, 8, (0, 0, 0))
    assert len(open_dataset(f"folder:{tmp_path}", 4)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"image folder '.*empty' has no usable image"):
        ImageFolder(empty, 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(f"folder:{tmp_path / 'missing'}", 8)


@pytest.mark.parametrize("spec", ["imagenet", "cifar10", "folder:", "cifar10:"])
def test_bad_data_spec(spec):
    with pytest.raises(ValueError, match=r"unknown data source .*synthetic, digits, idx:PATH, cifar10:PATH, folder:PATH"):
        open_dataset(spec, 32)


# --- labelled sources: synthetic classes, scikit-learn's digits, IDX files -----------------------

def test_synthetic_labels_are_what_the_generator_drew():
    d = SyntheticImages(16, seed=0)
    labels = d.batch_labels(range(300))
    assert labels.dtype == np.int64 and set(labels) == set(range(d.num_classes))
    for i in range(40):
        img, label = d.draw(i)
        assert label == labels[i]
        np.testing.assert_array_equal(img, d.image(i))
    # the generator draws 1 or 2 shapes evenly, and a disc / square / striped square as 3 : 2 : 1,
    # so the six classes (shapes x kind on top) have shares 1/4, 1/6, 1/12, 1/4, 1/6, 1/12
    shares = np.bincount(d.batch_labels(range(600)), minlength=6) / 600
    np.testing.assert_allclose(shares, [1 / 4, 1 / 6, 1 / 12, 1 / 4, 1 / 6, 1 / 12], atol=0.05)


def test_digits_split_labels_and_range():
    train, held = open_dataset("digits", 8), open_dataset("digits", 8, train=False)
    assert (len(train), len(held)) == (1437, 360) and train.channels == 1 and train.num_classes == 10
    x = held.batch([0, 1])
    assert x.shape == (2, 1, 8, 8) and x.min() == -1.0 and x.max() == 1.0
    assert np.bincount(held.labels, minlength=10).min() >= 20  # every digit is held out
    from sklearn.datasets import load_digits

    d = load_digits()
    np.testing.assert_allclose(held[1].numpy()[0], d.images[5] / 8.0 - 1.0, atol=1e-6)  # every 5th image is held out
    assert held.batch_labels([1]).tolist() == [d.target[5]]
    assert open_dataset("digits", 16).batch([0]).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="size=2 is invalid: expected an integer >= 4"):
        open_dataset("digits", 2)


def _write_idx(path, arr, gz=False):
    import gzip

    codes = {np.uint8: 0x08, np.int32: 0x0C}
    head = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    blob = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_and_dataset(tmp_path, gz):
    from zoo.training.data import read_idx

    suffix = ".gz" if gz else ""
    imgs = np.arange(5 * 6 * 6, dtype=np.uint8).reshape(5, 6, 6)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", imgs, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.array([3, 1, 4, 1, 5], np.uint8), gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", imgs[:2], gz)
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), imgs)
    d = open_dataset(f"idx:{tmp_path}", 6)
    assert len(d) == 5 and d.num_classes == 6 and d.batch_labels([0, 4]).tolist() == [3, 5]
    np.testing.assert_allclose(d[1].numpy()[0], imgs[1] / 127.5 - 1.0, atol=1e-6)
    held = open_dataset(f"idx:{tmp_path}", 6, train=False)
    assert len(held) == 2 and held.labels is None  # no t10k labels file: images only
    with pytest.raises(ValueError, match="no class labels"):
        held.batch_labels([0])
    assert open_dataset(f"idx:{tmp_path / f'train-images-idx3-ubyte{suffix}'}", 12, train=False).batch([0]).shape == (1, 1, 12, 12)


def test_idx_reader_refuses_bad_files(tmp_path):
    from zoo.training.data import read_idx

    good = _write_idx(tmp_path / "a", np.zeros((4, 3, 3), np.uint8)).read_bytes()
    (tmp_path / "magic").write_bytes(b"\x08\x03" + good[2:])
    with pytest.raises(ValueError, match="is not an IDX file: its magic is 0803"):
        read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(ValueError, match=r"is truncated: the header declares \(4, 3, 3\)"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(good + b"\0")
    with pytest.raises(ValueError, match="longer than its header says"):
        read_idx(tmp_path / "long")
    (tmp_path / "huge").write_bytes(bytes([0, 0, 8, 3]) + np.array([60000, 60000, 60000], ">u4").tobytes())
    with pytest.raises(ValueError, match="over the .*-byte limit"):
        read_idx(tmp_path / "huge")
    import gzip

    (tmp_path / "bad.gz").write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(ValueError, match="bad.gz"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(FileNotFoundError, match="has no train-images-idx3-ubyte"):
        open_dataset(f"idx:{tmp_path}", 3)


class _Codec:
    def __reduce__(self):
        import codecs

        return (codecs.encode, (b"ab" * 4, "hex_codec"))  # chained, a tiny pickle expands without bound


def test_cifar_unpickler_allows_only_latin1_bytes(cifar_dir):
    with pytest.raises(UnsafePickleError, match="_codecs.encode.*'hex_codec'.*only the latin-1 form"):
        restricted_load(pickle.dumps({b"data": _Codec()}, protocol=2))
    assert len(Cifar10(cifar_dir)) == 20  # protocol-2 pickles of bytes (the latin-1 form) still load


def _archive(tmp_path, cifar_dir, tweak):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(cifar_dir.iterdir()):
            info = tar.gettarinfo(str(f), arcname=f"cifar-10-batches-py/{f.name}")
            info = tweak(info) or info
            if info.isfile():
                with open(f, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return archive


def test_cifar_archive_members_are_bounded_regular_files(cifar_dir, tmp_path, monkeypatch):
    def link(info):
        if info.name.endswith("data_batch_1"):
            info.type, info.linkname, info.size = tarfile.SYMTYPE, "/etc/passwd", 0

    with pytest.raises(ValueError, match=r"member 'cifar-10-batches-py/data_batch_1' is a link; refused"):
        Cifar10(_archive(tmp_path, cifar_dir, link))
    monkeypatch.setattr("zoo.training.data.cifar.MAX_CIFAR_FILE_BYTES", 1000)
    with pytest.raises(ValueError, match=r"member 'cifar-10-batches-py/data_batch_1' has \d+ bytes, more than any"):
        Cifar10(_archive(tmp_path, cifar_dir, lambda info: None))


def test_cifar_truncated_or_garbage_archive_is_one_line(cifar_dir, tmp_path):
    good = _archive(tmp_path, cifar_dir, lambda info: None).read_bytes()
    bad = tmp_path / "bad.tar.gz"
    for blob in (good[: len(good) // 2], b"not a gzip file at all"):
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match="is not a readable .tar.gz archive") as e:
            Cifar10(bad)
        assert "\n" not in str(e.value)


def _centre(ds, i=0):
    return ds[i][:, ds.size // 2, ds.size // 2].numpy()


def test_image_folder_decodes_by_mode(tmp_path):
    """16-bit grey, float, palette and transparent images land in [-1, 1] at their true values."""
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "a_grey16.png")  # opens as I;16 (or I)
    Image.fromarray(np.full((16, 16), 0.25, np.float32)).save(tmp_path / "b_float.tif")  # mode F, 0..1
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red: white after compositing
    rgba.paste((0, 0, 255, 255), (4, 4, 12, 12))  # an opaque blue centre
    rgba.save(tmp_path / "c_rgba.png")
    Image.new("LA", (16, 16), (0, 0)).save(tmp_path / "d_la.png")  # transparent black: white
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(tmp_path / "e_palette.png")  # green by palette
    ds = ImageFolder(tmp_path, 8)
    assert [p.name for p in ds.files] == ["a_grey16.png", "b_float.tif", "c_rgba.png", "d_la.png", "e_palette.png"]
    assert abs(float(ds[0].mean())) < 0.02  # the ramp's mean is mid-grey (it came out 0.993 when clipped at 255)
    np.testing.assert_allclose(_centre(ds, 1), [-0.5] * 3, atol=1e-3)  # 0.25 of white (it came out black)
    np.testing.assert_allclose(_centre(ds, 2), [-1, -1, 1], atol=1e-2)
    np.testing.assert_allclose(ds[2][:, 0, 0].numpy(), [1, 1, 1], atol=1e-2)
    np.testing.assert_allclose(_centre(ds, 3), [1, 1, 1], atol=1e-3)
    np.testing.assert_allclose(_centre(ds, 4), [-1, 1, -1], atol=1e-3)
    for i in range(len(ds)):
        assert ds[i].dtype == torch.float32 and float(ds[i].min()) >= -1 and float(ds[i].max()) <= 1


def test_image_folder_verifies_every_image_at_scan(tmp_path, caplog):
    """A truncated image or one of an unknown range is found at scan time and counted, not mid-training."""
    _png(tmp_path / "good.png", 12, 12, (0, 0, 0))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # a valid header
    Image.fromarray(np.full((8, 8), 7.0e4, np.float32)).save(tmp_path / "hdr.tif")  # float far above 0..255
    (tmp_path / "notes.txt").write_text("not an image suffix: not a candidate")
    with caplog.at_level("WARNING"):
        ds = ImageFolder(tmp_path, 8)
    assert [p.name for p in ds.files] == ["good.png"]
    assert ds.skipped["unreadable"] == 1 and ds.skipped["unknown pixel range"] == 1
    assert "1 usable images; skipped 1 unreadable, 1 unknown pixel range" in caplog.text


def test_image_folder_skips_bad_files_but_raises_its_own_bugs(tmp_path, monkeypatch):
    """A damaged file is counted as unreadable; an error of diffzoo's own pixel code is raised, not counted."""
    _png(tmp_path / "good.png", 12, 12, (0, 0, 0))
    png = (tmp_path / "good.png").read_bytes()
    (tmp_path / "bad_crc.png").write_bytes(png[:40] + bytes([png[40] ^ 0xFF]) + png[41:])  # Pillow: SyntaxError or OSError
    ds = ImageFolder(tmp_path, 8)
    assert [p.name for p in ds.files] == ["good.png"] and ds.skipped["unreadable"] == 1

    def bug(im, path):
        raise AttributeError("a bug of ours")

    monkeypatch.setattr("zoo.training.data.folder._unit_range", bug)
    with pytest.raises(AttributeError, match="a bug of ours"):  # it read "no usable image" before
        ImageFolder(tmp_path, 8)
