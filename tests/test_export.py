"""export_bundle: complete, hashed bundles whose every artifact reproduces eager torch."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import export
import zoo
from export.bundle import _outputs, _reference, _run_onnx
from export.manifest import sha256_file
from export.specs import ARTIFACT_NAMES, INT8_ARTIFACTS, artifact_specs, make_inputs
from export.torchscript import load_traced
from export.verify import LOOP_ATOL, STEP_ATOL
from runtime.cli import main


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_bundle_is_complete_and_hashed(bundle):
    m = export.load_manifest(bundle.path)
    assert m == bundle.manifest
    on_disk = {p.name for p in bundle.path.iterdir()} - {"manifest.json"}
    assert set(m["files"]) == on_disk
    for name in ARTIFACT_NAMES:
        files = m["artifacts"][name]["files"]
        assert "onnx" in files
        assert ("torchscript" in files) == (name in ("denoiser", "ddim_step", "ddim_step_eta"))
    for name, info in m["files"].items():
        assert sha256_file(bundle.path / name) == info["sha256"]
        assert (bundle.path / name).stat().st_size == info["size"]
    assert all(c["passed"] for c in m["verification"]) and len(m["verification"]) == 10 + len(INT8_ARTIFACTS)
    assert m["model"] == {"name": bundle.manifest["model"]["name"], "config": m["model"]["config"]}
    assert m["data"]["shape"] == [3, 12, 12] and m["export"]["opset"] == 20
    assert m["artifacts"]["sampler"]["dynamic_axes"] == ["batch", "height", "steps", "width"]
    assert set(m["export"]["seconds"]) == {"weights", *ARTIFACT_NAMES, *(f"{a}_int8" for a in INT8_ARTIFACTS)}
    assert {a["precision"] for a in m["artifacts"].values()} == {"fp32", "int8"}


@pytest.mark.parametrize("artifact", [a for a in ARTIFACT_NAMES if not a.startswith("sampler")])
@pytest.mark.parametrize("sizes", [{"batch": 1, "height": 5, "width": 7}, {"batch": 4, "height": 16, "width": 10}])
def test_artifacts_match_eager_at_other_shapes(bundle, artifact, sizes):
    model, schedule, m = export.load_model(bundle.path)
    spec = artifact_specs(3)[artifact]
    inputs = make_inputs(spec, sizes, schedule.alphas_cumprod, torch.Generator().manual_seed(1))
    expected = _outputs(spec, _reference(spec, model, schedule, 1.0), inputs)
    files = m["artifacts"][artifact]["files"]
    got = {"onnx": _run_onnx(_session(bundle.path / files["onnx"]), inputs)}
    if "torchscript" in files:
        got["torchscript"] = _outputs(spec, load_traced(bundle.path / files["torchscript"]), inputs)
    for fmt, out in got.items():
        assert list(out) == [spec.outputs[0].name], fmt
        np.testing.assert_allclose(out[spec.outputs[0].name], expected[spec.outputs[0].name], rtol=0, atol=STEP_ATOL)


def _eager(bundle, x_T, steps, eta=0.0, noise=None):
    model, schedule, _ = export.load_model(bundle.path)
    return zoo.ddim_sample(model, schedule, x_T, num_steps=steps, eta=eta, noise=noise).numpy()


@pytest.mark.parametrize("steps", [10, 50])
def test_sampler_graph_matches_ddim_sample(bundle, steps):
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(2, 3, 12, 12, generator=g)
    sess = _session(bundle.path / "sampler.onnx")
    ts = zoo.ddim_timesteps(1000, steps, "leading")
    (x0,) = sess.run(None, {"x_T": x_T.numpy(), "timesteps": ts})
    ref = _eager(bundle, x_T, steps)
    np.testing.assert_allclose(x0, ref, rtol=0, atol=LOOP_ATOL)
    assert np.abs(x0).max() <= 1.0


def test_sampler_eta_graph_matches_ddim_sample(bundle):
    g = torch.Generator().manual_seed(3)
    x_T, noise = torch.randn(2, 3, 12, 12, generator=g), torch.randn(20, 2, 3, 12, 12, generator=g)
    sess = _session(bundle.path / "sampler_eta.onnx")
    feed = {"x_T": x_T.numpy(), "timesteps": zoo.ddim_timesteps(1000, 20, "leading"), "noise": noise.numpy(),
            "eta": np.array(0.8, np.float32)}
    (x0,) = sess.run(None, feed)
    np.testing.assert_allclose(x0, _eager(bundle, x_T, 20, eta=0.8, noise=noise), rtol=0, atol=LOOP_ATOL)
    (x0_det,) = _session(bundle.path / "sampler.onnx").run(None, {"x_T": x_T.numpy(), "timesteps": feed["timesteps"]})
    assert np.abs(x0 - x0_det).max() > 1e-2  # the noise input is really used


def test_fused_step_over_a_full_loop(bundle):
    g = torch.Generator().manual_seed(4)
    x_T = torch.randn(3, 3, 12, 12, generator=g)
    sess = _session(bundle.path / "fused_step.onnx")
    ts = zoo.ddim_timesteps(1000, 25, "leading")
    x = x_T.numpy()
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        (x,) = sess.run(None, {"x_t": x, "t": np.full(3, t, np.int64), "t_prev": np.full(3, t_prev, np.int64)})
    np.testing.assert_allclose(x, _eager(bundle, x_T, 25), rtol=0, atol=LOOP_ATOL)


def test_load_model_rebuilds_the_eager_model(bundle, bundles):
    model, schedule, m = export.load_model(bundle.path)
    assert model.name == m["model"]["name"] and schedule.to_dict() == m["schedule"]
    torch.manual_seed(0)
    original = zoo.build(model.name, hidden=8)  # the fixture's seeded init
    x, t = torch.randn(2, 3, 6, 6), torch.tensor([3, 900])
    torch.testing.assert_close(model(x, t), original(x, t), rtol=0, atol=0)


# --- failures leave nothing behind ------------------------------------------------------------

def _tiny(name="residual"):
    torch.manual_seed(0)
    return zoo.build(name, hidden=8)


def test_failed_verification_leaves_no_directory(tmp_path, monkeypatch):
    monkeypatch.setattr("export.bundle.STEP_ATOL", -1.0)  # a deliberately broken tolerance
    with pytest.raises(export.ExportVerificationError, match=r"denoiser/torchscript: max \|diff\|.*ddim_step/torchscript"):
        export.export_bundle(_tiny(), tmp_path / "b", example_shape=(3, 8, 8), formats=["torchscript"])
    assert list(tmp_path.iterdir()) == []




def test_broken_model_fails_verification(tmp_path):
    from zoo.models import ResidualDenoiser

    class Broken(ResidualDenoiser):  # scales by a Python int: tracing bakes the example width in
        def forward(self, x, t):
            return super().forward(x, t) * int(x.shape[-1])

    model = Broken(zoo.ResidualConfig(hidden=8))
    with pytest.raises(export.ExportVerificationError, match="denoiser/torchscript"):
        export.export_bundle(model, tmp_path / "b", example_shape=(3, 8, 8), formats=["torchscript"])
    assert list(tmp_path.iterdir()) == []


def test_non_empty_target_refused_and_old_bundle_intact(tmp_path):
    out = tmp_path / "b"
    first = export.export_bundle(_tiny(), out, example_shape=(3, 8, 8), formats=["torchscript"])
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(FileExistsError, match="not empty.*--force"):
        export.export_bundle(_tiny("conv"), out, example_shape=(3, 8, 8), formats=["torchscript"])
    assert (out / "manifest.json").read_bytes() == before
    export.load_manifest(out)
    second = export.export_bundle(_tiny("conv"), out, example_shape=(3, 8, 8), formats=["torchscript"], force=True)
    assert export.load_manifest(out)["model"]["name"] == "conv" != first.manifest["model"]["name"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp or backup left
    assert second.path == out


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"formats": ["tflite"]}, ValueError, r"'tflite'.*\['onnx', 'torchscript'\]"),
        ({"opset": 11}, ValueError, r"opset 11 .* 18\.\.23"),
        ({"example_shape": (1, 8, 8)}, ValueError, "C=1.*channels=3"),
        ({"example_shape": (3, 0, 8)}, ValueError, "example_shape"),
        ({"schedule": zoo.linear_schedule(100)}, ValueError, "T=100"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        export.export_bundle(_tiny(), tmp_path / "b", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_reports_times_and_errors(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["export", "--model", "conv", "--hidden", "8", "--size", "8", "--formats", "torchscript", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "denoiser            torchscript" in text and "bundle written to" in text
    assert json.loads((out / "manifest.json").read_text())["model"]["config"]["hidden"] == 8
    assert main(["export", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err
    ckpt = out / "weights.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--formats", "torchscript", "--out", str(tmp_path / "c")]) == 0
    assert export.load_manifest(tmp_path / "c")["model"]["name"] == "conv"
    assert main(["export", "--model", "unet", "--out", str(tmp_path / "d")]) == 2
    assert "unknown model 'unet'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
