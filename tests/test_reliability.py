"""Reliability, rounds 3 (issue 22) and 4 (issue 28): each defect an adversarial round found, with the input that showed it.

docs/ARCHITECTURE.md ("Bad input", rows 43 on) lists these beside the earlier ones; the serving ones are in test_serve.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

import numpy as np
import pytest

import export
import runtime
import zoo
from export.format.manifest import BundleError
from runtime.apps.cli import main
from conftest import replace_graph
from export.bundle import VERIFY_STEPS
from zoo.files import OutputBusyError, output_lock


def _copy(bundle, tmp_path, edit=None):
    path = tmp_path / "copy"
    shutil.copytree(bundle.path, path)
    if edit is not None:
        manifest = json.loads((path / "manifest.json").read_text())
        edit(manifest)
        (path / "manifest.json").write_text(json.dumps(manifest))
    return path


# --- 2. `export --force` replaces bundles only ----------------------------------------------------------

def test_force_refuses_a_directory_that_only_looks_like_a_bundle(tmp_path, capsys):
    web = tmp_path / "webext"
    (web / "icons").mkdir(parents=True)
    (web / "manifest.json").write_text('{"manifest_version": 3}')
    (web / "background.js").write_text("x")
    args = ["export", "--model", "conv", "--hidden", "8", "--size", "8", "--formats", "torchscript", "--force", "--out"]
    assert main([*args, str(web)]) == 2
    err = capsys.readouterr().err
    assert "is not a diffzoo bundle" in err and "nothing there was touched" in err
    assert sorted(p.name for p in web.iterdir()) == ["background.js", "icons", "manifest.json"]


def test_force_refuses_a_bundle_with_files_it_does_not_list(tmp_path, capsys):
    out = tmp_path / "b"
    args = ["export", "--model", "conv", "--hidden", "8", "--size", "8", "--formats", "torchscript", "--out", str(out)]
    assert main(args) == 0
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--force"]) == 2
    assert "not listed: ['notes.txt']" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert main([*args, "--force"]) == 0  # a real bundle is still replaced


# --- 3. editing the manifest alone cannot change which verified graph runs -------------------------------

@pytest.mark.parametrize("edit,mode,solver,match", [
    (lambda m: m["artifacts"]["sampler"].update(body="fused_step_dpmpp"), "loop", "ddim", r"differ on \['body'\]"),
    (lambda m: m["artifacts"]["fused_step"]["files"].update(onnx="fused_step_dpmpp.onnx"), "fused", "ddim",
     r"differ on \['artifact', 'solver'\]"),
    (lambda m: m["artifacts"]["fused_step"].update(solver="dpmpp_2m"), "fused", "dpmpp_2m", r"differ on \['solver'\]"),
    (lambda m: m.update(clip_range=0.5), "fused", "ddim", r"differ on \['clip_range'\]"),
])
def test_a_graph_carries_its_identity_in_its_hashed_bytes(bundles, tmp_path, edit, mode, solver, match):
    path = _copy(bundles["conv"], tmp_path, edit)
    with pytest.raises(BundleError, match=match):
        runtime.load(path, provider="cpu").sample(2, num_steps=3, mode=mode, solver=solver)


def test_an_unstamped_bundle_is_held_to_the_table(bundles, tmp_path):
    """A bundle from before identities were stamped loads, but only as the artifact table says."""
    import onnx

    from export.format.manifest import IDENTITY_KEY, sha256_file

    def unstamp(m):
        for name in ("fused_step.onnx", "fused_step_dpmpp.onnx"):
            f = tmp_path / "copy" / name
            proto = onnx.load(str(f))
            keep = [(p.key, p.value) for p in proto.metadata_props if p.key != IDENTITY_KEY]
            del proto.metadata_props[:]
            for k, v in keep:
                proto.metadata_props.add(key=k, value=v)
            onnx.save(proto, str(f))
            m["files"][name] = {"sha256": sha256_file(f), "size": f.stat().st_size}

    path = _copy(bundles["conv"], tmp_path, unstamp)
    assert runtime.load(path, provider="cpu").sample(2, num_steps=3, mode="fused").shape == (2, 3, 12, 12)
    m = json.loads((path / "manifest.json").read_text())
    m["artifacts"]["fused_step"]["files"]["onnx"] = "fused_step_dpmpp.onnx"
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="carries no identity.*not the table's: re-export"):
        runtime.load(path, provider="cpu").sample(2, num_steps=3, mode="fused")


# --- 4. the single-writer lock --------------------------------------------------------------------------

def test_two_spellings_of_one_output_share_one_lock(tmp_path):
    (tmp_path / "cc" / "x").mkdir(parents=True)
    with output_lock(tmp_path / "cc" / "b"):
        with pytest.raises(OutputBusyError):
            with output_lock(tmp_path / "cc" / "x" / ".." / "b"):
                pass


def test_a_lock_directory_that_is_not_private_or_a_planted_link_is_refused(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    lock_dir = tmp_path / f"diffzoo-locks-{os.getuid()}"
    lock_dir.mkdir(mode=0o777)
    lock_dir.chmod(0o777)
    with pytest.raises(PermissionError, match="open to other users"):
        with output_lock(tmp_path / "out"):
            pass
    lock_dir.chmod(0o700)
    if os.getuid() == 0:  # root can play the other user: a directory they pre-created and own
        os.chown(lock_dir, 12345, 12345)
        with pytest.raises(PermissionError, match="is owned by uid 12345"):
            with output_lock(tmp_path / "out"):
                pass
        os.chown(lock_dir, 0, 0)
    with output_lock(tmp_path / "out") as lock:  # a private directory of ours: fine
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    victim = tmp_path / "victim"
    lock.unlink()
    lock.symlink_to(victim)  # another user planting <key>.lock -> a file of their choice
    with pytest.raises(PermissionError, match="a link there is refused"):
        with output_lock(tmp_path / "out"):
            pass
    assert not victim.exists()
    shutil.rmtree(lock_dir)
    lock_dir.symlink_to(tmp_path)  # the directory itself a link
    with pytest.raises(PermissionError, match="is not a directory"):
        with output_lock(tmp_path / "out"):
            pass


# --- 5. outputs never replace what is not a regular file -------------------------------------------------

def test_an_output_that_is_not_a_regular_file_is_refused(bundles, tmp_path, capsys):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    link = tmp_path / "link.npy"
    link.symlink_to(tmp_path / "elsewhere.npy")
    for out, kind in ((fifo, "a device, FIFO or socket"), (link, "a symbolic link")):
        assert main(["sample", str(bundles["conv"].path), "--provider", "cpu", "--n", "1", "--steps", "2", "--out", str(out)]) == 2
        assert f"it exists and is {kind}, not a regular file" in capsys.readouterr().err
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink() and not (tmp_path / "elsewhere.npy").exists()
    from zoo.files import atomic_write

    with pytest.raises(FileExistsError, match="not a regular file"):
        atomic_write(fifo, b"x")  # the library's own writer refuses too (eval --json, images, checkpoints)
    with pytest.raises(FileExistsError, match="is a device, FIFO or socket"):
        atomic_write("/dev/null", b"x")  # refused before anything is written: /dev/null stays a device
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


# --- 11. the Python API's math on the wrong dtype --------------------------------------------------------

def test_integer_arrays_are_refused_not_turned_into_nan():
    import numpy as np

    x = np.ones((1, 1, 2, 2), np.int64)
    with pytest.raises(TypeError, match="x_t has dtype int64: expected a floating-point"):
        zoo.ddim_step(x, x, 0.5, 0.7)
    with pytest.raises(TypeError, match="x_t has dtype int64"):
        zoo.dpmpp_2m_step(x, x, x, 0.5, 0.7, 0.0)
    with pytest.raises(TypeError, match="x0 has dtype uint8"):
        zoo.make_training_sample(np.zeros((1, 1, 2, 2), np.uint8), np.zeros((1, 1, 2, 2), np.uint8), 0.5)
    assert np.isfinite(zoo.ddim_step(x.astype(np.float32), x.astype(np.float32), 0.5, 0.7)).all()


@pytest.mark.parametrize("kwargs,match", [({"s": float("inf")}, r"s=inf is invalid: expected a finite number >= 0"),
                                          ({"s": float("nan")}, "s=nan is invalid")])
def test_cosine_schedule_refuses_non_finite_s(kwargs, match):
    with pytest.raises(ValueError, match=match):
        zoo.cosine_schedule(1000, **kwargs)


def test_runtime_arguments_of_the_wrong_type_are_one_clear_error(bundles):
    import numpy as np

    path = bundles["conv"].path
    with pytest.raises(ValueError, match=r"threads=2.5 is invalid: expected an integer >= 1"):
        runtime.load(path, provider="cpu", threads=2.5)
    s = runtime.load(path, provider="cpu")
    x = np.zeros((2, 3, 12, 12), np.float32)
    plan = s.plan(n=2, num_steps=3)
    with pytest.raises(TypeError, match=r"x_T has shape \(2, 3, 12, 12\) and dtype float64: expected float32"):
        s.run_batch(plan, x.astype(np.float64))
    for bad in (np.array([1200, 600, 0]), np.array([0, 500, 900]), np.array([5, 5, 0])):
        with pytest.raises(ValueError, match="expected distinct, descending integers in 0..999"):
            s.plan(n=2, timesteps=bad, mode="fused")
    with pytest.raises(TypeError, match=r"a stochastic run needs float32 noise of shape \(S, B, C, H, W\) = \(3, 2, 3, 12, 12\)"):
        s.run_batch(s.plan(n=2, num_steps=3, eta=0.5, mode="fused"), x)
    with pytest.raises(ValueError, match="the conditioning is for 3 images, the batch has 2"):
        s.run_batch(s.plan(n=3, num_steps=3), x)
    assert s.run_batch(plan, x).shape == x.shape


# --- 10. failures after the work is done, and partial files left ----------------------------------------

def test_a_model_with_fewer_timesteps_than_the_sample_grid_trains_to_the_end(tmp_path):
    from zoo.training.train import TrainConfig, train

    cfg = TrainConfig(model="conv", model_config={"hidden": 4, "num_train_timesteps": 1}, size=8, steps=2, batch=4,
                      checkpoint_every=2)
    r = train(cfg, tmp_path / "run", progress=False)
    assert r.step == 2 and (tmp_path / "run" / "samples" / "step_0000002.png").is_file()


@pytest.mark.parametrize("args,match", [
    (["train", "--seed", "18446744073709551615", "--out", "RUN"], r"seed=18446744073709551615 is invalid: expected an integer in 0..4294967295"),
    (["train", "--out", ""], "out_dir='' is invalid: a run needs a directory of its own"),
    (["export", "--model", "conv", "--out", "."], "out_dir='.' is invalid: a bundle needs a directory of its own"),
    (["export", "--model", "conv", "--out", ""], "out_dir='' is invalid"),
])
def test_bad_outputs_and_seeds_are_refused_before_any_work(tmp_path, monkeypatch, capsys, args, match):
    monkeypatch.chdir(tmp_path)
    assert main([a.replace("RUN", str(tmp_path / "run")) for a in args]) == 2
    assert pytest.importorskip("re").search(match, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # no config.json, no samples/, nothing trained into the current directory


def test_outputs_that_cannot_be_written_are_refused_before_sampling(bundles, tmp_path, capsys):
    out_dir = tmp_path / "dir.png"
    out_dir.mkdir()
    assert main(["sample", str(bundles["conv"].path), "--provider", "cpu", "--steps", "2", "--out", str(out_dir)]) == 2
    assert "it is a directory" in capsys.readouterr().err
    assert main(["eval", str(bundles["conv"].path), "--json", str(out_dir), "--data", "digits"]) == 2
    assert "it is a directory" in capsys.readouterr().err


def test_resume_removes_what_an_interrupted_checkpoint_left(tmp_path):
    from zoo.training.train import TrainConfig, train

    cfg = TrainConfig(model="conv", model_config={"hidden": 4}, size=8, steps=4, batch=4, checkpoint_every=2)
    train(cfg, tmp_path / "run", progress=False, until=2)
    left = [tmp_path / "run" / "checkpoints" / ".step_0000004.partial-x1", tmp_path / "run" / ".config.json.abc.tmp"]
    left[0].mkdir()
    left[1].write_text("partial")
    train(cfg, tmp_path / "run", resume=True, progress=False)
    assert not any(p.exists() for p in left)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]


def test_sigterm_leaves_no_partial_output(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "runtime.apps.cli", "train", "--model", "conv", "--hidden", "4", "--size", "8",
           "--steps", "100000", "--batch", "4", "--checkpoint-every", "1", "--device", "cpu", "--out", str(run)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints").is_dir() or len(list((run / "checkpoints").iterdir())) < 2:
            assert time.monotonic() < deadline and p.poll() is None, p.stderr.read() if p.poll() is not None else "timeout"
            time.sleep(0.2)
        time.sleep(1.0)  # checkpointing every step: the signal lands in or near a staged write
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 143 and "diffzoo train: terminated (SIGTERM); nothing partial was left" in err
    partial = [q for q in run.rglob(".*") if ".partial-" in q.name or q.name.endswith(".tmp") or q.name.startswith(".last.")]
    assert partial == []


# --- 9. wrong data accepted silently --------------------------------------------------------------------

def test_a_cifar_batch_with_too_few_labels_is_refused_and_cifar_has_classes(tmp_path):
    import pickle

    import numpy as np

    from zoo.training.data import Cifar10

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()

    def batch(n, labels):
        return pickle.dumps({b"labels": labels, b"data": np.zeros((n, 3072), np.uint8)}, protocol=2)

    (root / "test_batch").write_bytes(batch(50, list(range(10)) + [0] * 5))  # 15 labels for 50 images
    with pytest.raises(ValueError, match=r"'labels' must be 50 integers in 0..9, one per image; got int64 \(15,\)"):
        Cifar10(root, train=False)
    (root / "test_batch").write_bytes(batch(4, [0, 1, 2, 3]))
    ds = Cifar10(root, train=False)
    assert ds.num_classes == 10 and ds.batch_labels([0, 3]).tolist() == [0, 3]  # eval can measure against CIFAR-10


def _run(tmp_path, name, **kw):
    from zoo.training.train import TrainConfig, train

    cfg = TrainConfig(model="conv", model_config={"hidden": 4}, size=8, steps=4, batch=4, checkpoint_every=2, **kw)
    return cfg, train(cfg, tmp_path / name, progress=False, until=2)


def test_resume_refuses_a_state_from_another_checkpoint_or_run(tmp_path):
    import torch

    from zoo.training.runs import CHECKPOINT_STATE, load_state
    from zoo.training.train import train

    cfg, _ = _run(tmp_path, "a")
    other = tmp_path / "b"
    train(cfg, other, progress=False)  # step 4
    ckpt, _ = load_state(tmp_path / "a")
    state = torch.load(load_state(other)[0] / CHECKPOINT_STATE, weights_only=True)
    torch.save(state, ckpt / CHECKPOINT_STATE)  # step 4's state inside step_0000002
    with pytest.raises(ValueError, match="holds step 4 but lives in 'step_0000002'"):
        train(cfg, tmp_path / "a", resume=True, progress=False)
    cfg, _ = _run(tmp_path, "c")
    last = tmp_path / "c" / "last"
    last.unlink()
    last.symlink_to(load_state(other)[0])  # `last` pointing into another run
    with pytest.raises(ValueError, match="outside this run's checkpoints/: refusing to resume another run's state"):
        train(cfg, tmp_path / "c", resume=True, progress=False)


def test_resume_refuses_a_changed_ema_decay(tmp_path):
    import dataclasses

    from zoo.training.train import train

    cfg, _ = _run(tmp_path, "a")
    with pytest.raises(ValueError, match=r"--resume: the checkpoint has ema_decay=0.999 but this run asks for ema_decay=0.9"):
        train(dataclasses.replace(cfg, ema_decay=0.9), tmp_path / "a", resume=True, progress=False)


def test_an_atol_that_could_never_fail_and_a_boolean_format_version_are_refused(bundles, tmp_path):
    with pytest.raises(ValueError, match=r"atol=1e\+300 is invalid: expected a finite number with 0.0 < x <= 1.0|atol=1e\+300 is invalid"):
        export.export_bundle(zoo.build("conv", hidden=4), tmp_path / "b", example_shape=(3, 8, 8), atol=1e300)
    with pytest.raises(ValueError, match="atol=1.0 is invalid: expected 0 < atol < 1"):
        runtime.parity(bundles["conv"].path, provider="cpu", num_steps=2, atol=1.0)
    path = _copy(bundles["conv"], tmp_path, lambda m: m.update(format_version=True))
    with pytest.raises(BundleError, match="format_version=True"):
        runtime.load(path, provider="cpu")


# --- 7. tracebacks for bad input, now one line each -----------------------------------------------------

def test_json_nested_too_deep_is_one_line(bundles, tmp_path, capsys):
    path = _copy(bundles["conv"], tmp_path)
    (path / "manifest.json").write_text("[" * 5000 + "]" * 5000)
    assert main(["sample", str(path), "--provider", "cpu", "--out", str(tmp_path / "x.png")]) == 2
    assert "nests its JSON too deeply" in capsys.readouterr().err
    import struct

    from zoo.weights import load_weights

    header = json.dumps({"__metadata__": {"diffzoo": "[" * 5000 + "]" * 5000}}).encode()
    (tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ValueError, match="its diffzoo metadata is not valid JSON"):
        load_weights(tmp_path / "w.safetensors")


@pytest.mark.parametrize("damage,match", [
    (lambda s: s["config"].pop("lr"), r"the checkpoint's config lacks \['lr'\]"),
    (lambda s: s.update(ema={}), "the checkpoint's weights do not fit"),
    (lambda s: s["model"].update({k: v[:1] for k, v in list(s["model"].items())[:1]}), "the checkpoint's weights do not fit"),
])
def test_a_damaged_training_state_is_one_line(tmp_path, capsys, damage, match):
    import torch

    from zoo.training.runs import CHECKPOINT_STATE, load_state

    args = ["train", "--model", "conv", "--hidden", "4", "--size", "8", "--steps", "4", "--batch", "4",
            "--checkpoint-every", "2", "--out", str(tmp_path / "run")]
    assert main([*args[:-2], "--steps", "2", "--out", str(tmp_path / "run")]) == 0
    ckpt, state = load_state(tmp_path / "run")
    damage(state)
    torch.save(state, ckpt / CHECKPOINT_STATE)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pytest.importorskip("re").search(match, err[0])


@pytest.mark.parametrize("shape,labels,match", [
    ((0, 4, 4), None, r"expected uint8 images \(N, H, W\), at least one image"),
    ((3, 0, 4), None, "at least one image of at least 1 x 1 pixels"),
    ((3, 4, 4), [0, -1, 2], r"holds labels -1..2 .*expected integers in 0..9999"),
    ((3, 4, 4), [0, 2**31 - 1, 2], r"holds labels 0..2147483647"),
])
def test_bad_idx_files_are_one_line(tmp_path, shape, labels, match):
    import struct

    import numpy as np

    from zoo.training.data import IdxImages

    def write(path, arr, code):
        path.write_bytes(bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(arr.dtype.newbyteorder(">")).tobytes())

    write(tmp_path / "train-images-idx3-ubyte", np.zeros(shape, np.uint8), 0x08)
    if labels is not None:
        write(tmp_path / "train-labels-idx1-ubyte", np.array(labels, np.int32), 0x0C)
    with pytest.raises(ValueError, match=match):
        IdxImages(tmp_path, 8)


def test_hash_passing_graphs_that_onnxruntime_refuses_name_the_artifact(bundles, tmp_path, capsys):
    import onnx
    from onnx import helper

    from export.format.manifest import IDENTITY_KEY, sha256_file

    def replace(m, data):
        f = tmp_path / "copy" / "fused_step.onnx"
        f.write_bytes(data)
        m["files"][f.name] = {"sha256": sha256_file(f), "size": f.stat().st_size}

    path = _copy(bundles["conv"], tmp_path, lambda m: replace(m, b"garbage" * 100))
    assert main(["sample", str(path), "--provider", "cpu", "--mode", "fused", "--steps", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "'fused_step' of the bundle" in capsys.readouterr().err
    original = onnx.load(str(bundles["conv"].path / "fused_step.onnx"))
    identity = next(p.value for p in original.metadata_props if p.key == IDENTITY_KEY)
    node = helper.make_node("Mystery", ["x_t"], ["x_prev"], domain="evil.ops")
    graph = helper.make_graph([node], "g", list(original.graph.input), list(original.graph.output))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("evil.ops", 1)])
    model.metadata_props.add(key=IDENTITY_KEY, value=identity)  # a forger can stamp too: onnxruntime still refuses it
    shutil.rmtree(path)
    path = _copy(bundles["conv"], tmp_path, lambda m: replace(m, model.SerializeToString()))
    assert main(["sample", str(path), "--provider", "cpu", "--mode", "fused", "--steps", "2", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the 'fused_step' graph of the bundle" in err[0] and "cannot be loaded by onnxruntime" in err[0]


# --- 8. one bad image no longer aborts a folder ----------------------------------------------------------

def test_every_decode_failure_is_skipped_counted_and_named(tmp_path, caplog):

    import numpy as np
    from PIL import Image, PngImagePlugin

    from zoo.training.data import ImageFolder

    Image.fromarray(np.full((6, 6, 3), 200, np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad_header.ppm").write_bytes(b"P6 1x 4 255\n" + b"\0" * 48)
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)  # a zTXt chunk too large to decompress
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "ztxt.png", pnginfo=info)
    rng = np.random.default_rng(0)
    good_ppm = b"P6 4 4 255\n" + bytes(48)
    for i in range(40):  # mutated PPMs: every one is skipped or decoded, none escapes
        blob = bytearray(good_ppm)
        for j in rng.integers(0, len(blob), 3):
            blob[j] = int(rng.integers(0, 256))
        (tmp_path / f"fuzz{i:02d}.ppm").write_bytes(bytes(blob))
    with caplog.at_level("WARNING"):
        ds = ImageFolder(tmp_path, 4)
    assert "good.png" in [p.name for p in ds.files]
    assert "bad_header.ppm" not in [p.name for p in ds.files] and ds.skipped["unreadable"] >= 2
    assert "first: bad_header.ppm (unreadable" in caplog.text


def test_exif_orientation_is_applied(tmp_path):
    import numpy as np
    from PIL import Image

    from zoo.training.data import ImageFolder

    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = 255  # left half white, 8 wide x 4 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    x = ImageFolder(tmp_path, 8).batch([0])[0]  # displayed: 4 wide x 8 high, white on top; centre-cropped to 8x8
    top, bottom = x[:, :2].mean(), x[:, -2:].mean()
    assert top > 0.5 > -0.5 > bottom


# --- 6. refused up front with the estimate, or bounded by a named limit ----------------------------------

@pytest.mark.parametrize("args", [
    ["train", "--size", "100000", "--out", "RUN"],
    ["train", "--data", "digits", "--size", "30000", "--out", "RUN"],
    ["train", "--batch", "100000000", "--out", "RUN"],
    ["export", "--model", "conv", "--size", "100000", "--out", "RUN"],
    ["eager-sample", "--n", "100000000", "--out", "RUN.png"],
])
def test_requests_too_large_for_memory_are_refused_with_the_estimate(tmp_path, capsys, args):
    import time

    t0 = time.perf_counter()
    assert main([a.replace("RUN", str(tmp_path / "out")) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs about" in err[0] and "of memory available here" in err[0]
    assert time.perf_counter() - t0 < 60 and list(tmp_path.iterdir()) == []  # refused before the allocation


def test_parity_of_a_huge_batch_is_refused_up_front(bundles, capsys):
    assert main(["parity", str(bundles["conv"].path), "--provider", "cpu", "--batch", "200000"]) == 2
    assert "parity of 200000 images over 50 steps" in capsys.readouterr().err


@pytest.mark.parametrize("args,match", [
    (["train", "--model", "unet", "--model-config", "num_train_timesteps=100000000000", "--out", "RUN"],
     "num_train_timesteps=100000000000 is invalid: expected at most 100,000"),
    (["train", "--model", "unet", "--model-config", "blocks=200000", "--out", "RUN"],
     "blocks=200000 is invalid: expected at most 64 residual blocks per level"),
])
def test_model_configs_beyond_a_named_limit_are_refused(tmp_path, capsys, args, match):
    assert main([a.replace("RUN", str(tmp_path / "out")) for a in args]) == 2
    assert match in capsys.readouterr().err
    with pytest.raises(ValueError, match="blocks=200000 is invalid"):
        zoo.parameter_count("unet", blocks=200000)


def test_a_weights_header_with_an_absurd_T_is_one_line(tmp_path):
    import struct

    from zoo.weights import load_weights

    meta = {"model": {"name": "conv", "config": {"num_train_timesteps": 10**10}},
            "schedule": {"name": "linear", "num_train_timesteps": 10**10}}
    header = json.dumps({"__metadata__": {"diffzoo": json.dumps(meta)}}).encode()
    (tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ValueError, match="num_train_timesteps=10000000000 is invalid: expected at most 100,000"):
        load_weights(tmp_path / "w.safetensors")


def test_image_and_data_files_too_large_to_hold_are_skipped_or_refused(tmp_path, monkeypatch):
    from PIL import Image

    from zoo.resources import InsufficientMemoryError
    from zoo.training.data import Cifar10, IdxImages, ImageFolder

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (4_000_000, 1)).save(folder / "strip.png")  # 4 M pixels, resized to 128 M x 32 first
    Image.new("RGB", (8, 8)).save(folder / "ok.png")
    ds = ImageFolder(folder, 32)
    assert [p.name for p in ds.files] == ["ok.png"] and ds.skipped["too large"] == 1
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    with open(cifar / "test_batch", "wb") as f:
        f.truncate(12 << 30)  # a sparse 12 GB file: refused by its size, never read
    with pytest.raises(ValueError, match="a CIFAR-10 batch is 31 MB"):
        Cifar10(cifar, train=False)
    import struct

    idx = tmp_path / "train-images-idx3-ubyte"
    idx.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 1000, 28, 28) + bytes(1000 * 784))
    monkeypatch.setattr("zoo.resources.available_memory", lambda: 5_000_000)  # a machine with 5 MB free
    with pytest.raises(InsufficientMemoryError, match="1,000 IDX images of 28x28 converted to float needs about"):
        IdxImages(idx, 28)


def test_a_shipped_loop_graph_must_be_bounded_by_its_timesteps(bundles, tmp_path):
    import onnx
    from onnx import helper

    from export.format.manifest import sha256_file
    from export.loop import loop_is_bounded

    shipped = onnx.load(str(bundles["conv"].path / "sampler.onnx"))
    assert loop_is_bounded(shipped)
    loop = next(n for n in shipped.graph.node if n.op_type == "Loop")
    shipped.graph.initializer.append(helper.make_tensor("forever", onnx.TensorProto.INT64, [], [2**62]))
    loop.input[0] = "forever"  # a hash-passing graph that loops on a constant of its own
    assert not loop_is_bounded(shipped)

    def replace(m):
        f = tmp_path / "copy" / "sampler.onnx"
        onnx.save(shipped, str(f))
        m["files"][f.name] = {"sha256": sha256_file(f), "size": f.stat().st_size}

    path = _copy(bundles["conv"], tmp_path, replace)
    s = runtime.load(path, provider="cpu")
    s.optimize_cpu_loop = False  # run the shipped Loop, as the CUDA provider does
    with pytest.raises(BundleError, match="does not bound its Loop by the timesteps it is given"):
        s.sample(1, num_steps=2)


def test_a_file_size_limit_during_the_cpu_loop_rebuild_names_the_temporary_file(bundles, tmp_path):
    path = max((b.path for b in bundles.values()), key=lambda p: (p / "fused_step.onnx").stat().st_size)
    limit_kb = (path / "fused_step.onnx").stat().st_size // 1024 // 2  # half the graph: its optimised copy cannot fit
    r = _sample_under(f"ulimit -f {limit_kb}", path, "--n", 1, "--out", tmp_path / "x.npy")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot write the CPU-optimised loop body to the temporary file" in r.stderr and "File too large" in r.stderr


def test_a_hash_passing_graph_asking_for_terabytes_is_one_line(bundles, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    from export.format.manifest import IDENTITY_KEY, sha256_file

    original = onnx.load(str(bundles["conv"].path / "fused_step.onnx"))
    identity = next(p.value for p in original.metadata_props if p.key == IDENTITY_KEY)
    nodes = [  # x_prev = x_t + 0 * sum(zeros(2^40)): 4 TB of float32 asked for on the way
        helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["x_t", "nothing"], ["x_prev"]),
    ]
    inits = [helper.make_tensor("huge_shape", TensorProto.INT64, [1], [2**40]), helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph = helper.make_graph(nodes, "g", list(original.graph.input), list(original.graph.output), initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    model.metadata_props.add(key=IDENTITY_KEY, value=identity)

    def replace(m):
        f = tmp_path / "copy" / "fused_step.onnx"
        f.write_bytes(model.SerializeToString())
        m["files"][f.name] = {"sha256": sha256_file(f), "size": f.stat().st_size}

    path = _copy(bundles["conv"], tmp_path, replace)
    rc = main(["sample", str(path), "--provider", "cpu", "--mode", "fused", "--n", "1", "--steps", "2",
               "--out", str(tmp_path / "x.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc in (1, 2) and len(err) == 1 and "diffzoo sample: error:" in err[0], err
    assert not (tmp_path / "x.npy").exists()


# --- round 4 (issue 28), 3: nothing of the user's deleted or overwritten --------------------------------------

@pytest.mark.parametrize("make", ["files", "bundle"])
def test_train_writes_into_nothing_but_a_run(bundles, tmp_path, capsys, make):
    out = tmp_path / "mine"
    if make == "files":
        out.mkdir()
        (out / "config.json").write_text('{"mine": true}')
        (out / "summary.json").write_text("my notes")
        (out / "samples").mkdir()
    else:
        shutil.copytree(bundles["conv"].path, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["train", "--model", "conv", "--hidden", "4", "--size", "8", "--steps", "2", "--batch", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a diffzoo training run" in err[0] and "nothing there was touched" in err[0], err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    from zoo.training import train as train_module

    def full_disk(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 138688 vs 138608")  # torch.save's

    monkeypatch.setattr(train_module, "save_weights", full_disk)
    out = tmp_path / "run"
    with pytest.raises(OSError, match=r"cannot write the checkpoint of step 2 into .*bytes free there.*unexpected pos"):
        train_module.train(train_module.TrainConfig(model="conv", model_config={"hidden": 4}, size=8, steps=2, batch=4),
                           out, progress=False)
    assert not out.exists()  # nothing to resume from: no partial run left


def test_disk_full_during_training_is_one_line_and_leaves_no_partial_run(small_fs, capsys):
    out = small_fs / "run"
    args = ["train", "--model", "unet", "--hidden", "8", "--size", "8", "--steps", "2", "--batch", "4", "--out", str(out)]
    assert main(args) == 2
    err = [x for x in re.split(r"[\r\n]", capsys.readouterr().err) if x.strip() and not x.startswith("train:")]  # tqdm's
    assert len(err) == 1 and "cannot write the checkpoint of step 2" in err[0] and "the disk is full" in err[0], err
    assert list(small_fs.iterdir()) == []


# --- round 4, 4: one line, not a traceback ---------------------------------------------------------------

def test_a_model_with_fewer_timesteps_than_the_verification_steps_exports(tmp_path):
    """T = 1, the extreme: every step count export uses (verification, tracing, the timestep grid) clamped to T."""
    T = 1
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = zoo.build("conv", hidden=4, num_train_timesteps=T)
    b = export.export_bundle(model, tmp_path / "b", example_shape=(3, 8, 8), formats=["onnx"], solvers=["dpmpp_2m"])
    loops = [c for c in b.checks if "steps" in c["shape"]]
    assert loops and all(c["passed"] and c["shape"]["steps"] <= T for c in b.checks if "steps" in c["shape"])
    assert b.manifest["export"]["verify_steps"] == min(T, VERIFY_STEPS)
    assert runtime.load(b.path, "cpu").sample(2, num_steps=T, solver="dpmpp_2m").shape == (2, 3, 8, 8)


def test_a_loop_whose_derived_bound_checks_nothing_is_verified_over_fewer_steps(tmp_path):
    """A chaotic model (weights scaled up): float32 cannot follow float64 over 50 steps, so a bound derived there would
    pass anything; the export verifies over fewer steps, where it means something, and says so."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = zoo.build("residual", hidden=8)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    b = export.export_bundle(model, tmp_path / "b", example_shape=(3, 8, 8), formats=["onnx"], solvers=["ddim"],
                             clip_range=None)
    loop = next(c for c in b.checks if c["artifact"] == "sampler")
    assert loop["shape"]["steps"] < VERIFY_STEPS and "exceeds 0.1 and would check nothing" in loop["note"], loop
    assert loop["atol"] <= 0.1 or "grossly wrong" in loop["note"]


def test_a_step_graph_whose_output_grows_is_stopped_at_the_first_step(bundles, tmp_path):
    import onnx
    from onnx import helper

    original = onnx.load(str(bundles["conv"].path / "fused_step.onnx"))
    grow = helper.make_node("Concat", ["x_t", "x_t"], ["x_prev"], axis=2)  # H doubles each step
    out = helper.make_tensor_value_info("x_prev", onnx.TensorProto.FLOAT, ["batch", 3, "h2", "width"])
    graph = helper.make_graph([grow], "g", list(original.graph.input), [out])
    path = replace_graph(bundles["conv"], tmp_path, "fused_step.onnx",
                         lambda _: helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10))
    with pytest.raises(BundleError, match=r"returned x_t of shape \(2, 3, 24, 12\) at step 0 for x_T \(2, 3, 12, 12\)"):
        runtime.load(path, "cpu").sample(2, num_steps=40, mode="fused")


@pytest.mark.parametrize("mode", ["fused", "step"])
def test_an_onnxruntime_failure_while_stepping_is_one_line(bundles, tmp_path, capsys, mode):
    import onnx
    from onnx import helper

    name = "fused_step.onnx" if mode == "fused" else "ddim_step.onnx"
    original = onnx.load(str(bundles["conv"].path / name))
    shape = helper.make_tensor("bad_shape", onnx.TensorProto.INT64, [2], [7, -1])  # 7 does not divide the batch
    nodes = [helper.make_node("Reshape", ["x_t", "bad_shape"], ["flat"]),
             helper.make_node("Reshape", ["flat", "x_shape"], ["x_prev"]), helper.make_node("Shape", ["x_t"], ["x_shape"])]
    graph = helper.make_graph([nodes[2], nodes[0], nodes[1]], "g", list(original.graph.input), list(original.graph.output),
                              initializer=[shape])
    path = replace_graph(bundles["conv"], tmp_path, name, lambda _: helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10))
    assert main(["sample", str(path), "--provider", "cpu", "--mode", mode, "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the '{name[:-5]}' graph of the bundle" in err[0] and "failed while running" in err[0], err


def test_sigterm_terminates_the_onnxruntime_run_in_progress(bundles, tmp_path):
    """A whole-loop run of minutes is one onnxruntime call: SIGTERM stops it within seconds, not at its end."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "runtime.apps.cli", "sample", str(bundles["residual"].path), "--provider", "cpu", "--n",
           "4096", "--batch-size", "4096", "--steps", "1000", "--out", str(tmp_path / "x.npy")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)  # loaded, well inside the 1000-step run of one call (minutes here)
        assert p.poll() is None, p.communicate()
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        p.kill()
    assert p.returncode == 143 and "terminated (SIGTERM)" in err, err
    assert waited < 15, waited  # the run was terminated, not waited for
    assert not (tmp_path / "x.npy").exists()


def test_non_ascii_class_names_are_drawn_as_letters_never_boxes(tmp_path):
    from PIL import Image, ImageDraw

    from zoo.images import _label_font, save_labelled_rows

    x = np.zeros((2, 1, 8, 8), np.float32)

    def label_pixels(name, raw=False):
        if raw:  # how the name was drawn before: every glyph the font lacks a box
            img = Image.new("RGB", (200, 30), (255, 255, 255))
            ImageDraw.Draw(img).text((4, 4), name, fill=(0, 0, 0), font=_label_font())
            return np.asarray(img)
        save_labelled_rows(tmp_path / "r.png", x, [name, "b"], scale=2)
        return np.asarray(Image.open(tmp_path / "r.png"))

    drawn = label_pixels("zéro")
    assert not np.array_equal(drawn, label_pixels("z?ro"))
    font = _label_font()
    if hasattr(font, "getmask2") and bytes(font.getmask("é")) != bytes(font.getmask("\U0010fffd")):
        assert not np.array_equal(drawn, label_pixels("zero"))  # the accent is drawn where the font has it
    else:
        assert np.array_equal(drawn, label_pixels("zero"))  # the bitmap font: its unaccented letter


# --- round 4, 2: memory limits of the process, not of the machine -------------------------------------------

def test_available_memory_reads_the_cgroup_limit(tmp_path):
    from zoo.resources import cgroup_available

    v1 = tmp_path / "sys" / "memory" / "pod" / "ctr"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("1610612736\n")  # 1.5 GiB
    (v1 / "memory.usage_in_bytes").write_text("610612736\n")
    (v1 / "memory.stat").write_text("cache 0\ntotal_inactive_file 100000000\n")
    (tmp_path / "sys" / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # the root: no limit
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/pod/ctr\n1:cpu:/\n")
    assert cgroup_available(proc, tmp_path / "sys") == 1610612736 - 610612736 + 100000000
    v2 = tmp_path / "v2"
    (v2 / "kube" / "pod").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("memory\n")
    (v2 / "kube" / "memory.max").write_text("1000000000\n")  # the ancestor's limit binds
    (v2 / "kube" / "memory.current").write_text("400000000\n")
    (v2 / "kube" / "pod" / "memory.max").write_text("max\n")
    (v2 / "kube" / "pod" / "memory.current").write_text("300000000\n")
    proc.write_text("0::/kube/pod\n")
    assert cgroup_available(proc, v2) == 600000000
    proc.write_text("0::/\n")
    assert cgroup_available(proc, v2) is None


def _sample_under(limit: str, bundle, *args) -> "subprocess.CompletedProcess":
    """``diffzoo sample BUNDLE --provider cpu --steps 2 ARGS`` in a shell that first sets ``limit`` (a ``ulimit``)."""
    import shlex
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "runtime.apps.cli", "sample", bundle, "--provider", "cpu", "--steps", 2, *args]
    return subprocess.run(["bash", "-c", f"{limit}; " + shlex.join(map(str, cmd))], capture_output=True, text=True,
                          timeout=300)


def test_a_sample_larger_than_ulimit_v_is_refused_naming_the_limit(bundles, tmp_path):
    r = _sample_under("ulimit -v 3000000", bundles["conv"].path, "--n", 2000000, "--batch-size", 2000000,
                      "--out", tmp_path / "x.npy")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "needs about" in r.stderr and "ulimit -v still allows this process" in r.stderr


def test_a_batch_too_large_for_the_cgroup_is_split_not_killed(bundles, tmp_path, memory_cgroup):
    import subprocess
    import sys

    sampler = runtime.load(bundles["unet"].path, "cpu")
    per_image = sampler.activation_bytes(sampler.plan(solver="ddim"))
    n = int(600e6 // per_image) + 64  # activations alone past the cgroup's limit of 600 MB at one batch
    cmd = [sys.executable, "-m", "runtime.apps.cli", "sample", str(bundles["unet"].path), "--provider", "cpu", "--n", str(n),
           "--batch-size", str(n), "--steps", "1", "--out", str(tmp_path / "x.npy")]
    r = memory_cgroup(cmd, 600 * 2**20)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "do not fit in the memory available here: sampling in batches of" in r.stderr
    assert np.load(tmp_path / "x.npy").shape[0] == n
