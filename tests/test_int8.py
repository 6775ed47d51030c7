"""int8 variants: which nodes are quantized, how they are verified, and how the runtime runs them."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import INT8_MODELS

import export
import runtime
import zoo
from export.quantize import calibration_states, inner_nodes
from export.verify import INT8_LOOP_RTOL, INT8_STEP_RTOL, compare_outputs, relative_rms
from runtime.apps.cli import main

# (quantized hidden x hidden convolutions, fp32 convolutions) per zoo model
CONVS = {"residual": (4, 2), "conv": (2, 2)}


@pytest.fixture(params=INT8_MODELS)
def model_name(request) -> str:
    return request.param


@pytest.fixture
def bundle(int8_bundles, model_name):
    return int8_bundles[model_name]


def test_int8_is_refused_where_it_does_not_apply(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="int8=True is not available for the 'unet' model: its GroupNorm"):
        export.export_bundle(zoo.build("unet", hidden=8), tmp_path / "b", example_shape=(3, 8, 8), int8=True)
    assert list(tmp_path.iterdir()) == []


def _ops(bundle, artifact):
    graph = onnx.load(str(bundle.path / bundle.manifest["artifacts"][artifact]["files"]["onnx"])).graph
    return [n.op_type for n in graph.node]


@pytest.mark.parametrize("artifact", ["denoiser_int8", "fused_step_int8", "fused_step_eta_int8"])
def test_only_the_inner_convolutions_are_quantized(bundle, model_name, artifact):
    ops = _ops(bundle, artifact)
    assert (ops.count("QLinearConv"), ops.count("Conv")) == CONVS[model_name]
    # the DDIM arithmetic after epsilon is untouched: one DequantizeLinear leaves int8 before the last conv
    assert ops.count("DequantizeLinear") == 1
    assert not {"QLinearMul", "QLinearSub", "QLinearDiv"} & set(ops)


def test_inner_nodes_are_between_the_first_and_last_conv(bundle):
    graph = onnx.load(str(bundle.path / "fused_step.onnx")).graph
    names = inner_nodes(graph)
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert convs[0] not in names and convs[-1] not in names and set(convs[1:-1]) <= set(names)
    assert all(n.op_type in ("Conv", "Relu", "Add") for n in graph.node if n.name in names)


def test_inner_nodes_needs_three_convolutions():
    graph = onnx.helper.make_graph([onnx.helper.make_node("Conv", ["x", "w"], ["y"], name="c")], "g", [], [])
    with pytest.raises(ValueError, match="at least 3 convolutions; this graph has 1"):
        inner_nodes(graph)


def test_calibration_follows_the_sampling_trajectory(small_model):
    states = calibration_states(small_model, zoo.linear_schedule(1000), (3, 8, 8), seed=0, images=2, steps=5)
    ts = [t for _, t, _ in states]
    assert ts == zoo.ddim_timesteps(1000, 5).tolist()
    assert [tp for _, _, tp in states] == ts[1:] + [-1]
    assert all(x.shape == (2, 3, 8, 8) and x.dtype == np.float32 for x, _, _ in states)
    assert np.std(states[0][0]) > 0.9  # starts from Gaussian noise


def test_int8_checks_are_recorded_with_their_bounds(bundle):
    checks = {c["artifact"]: c for c in bundle.checks}
    for name in ("denoiser_int8", "fused_step_int8", "fused_step_eta_int8", "sampler_int8", "sampler_eta_int8"):
        c = checks[name]
        assert c["passed"] and c["atol"] is None
        assert c["rtol"] == (INT8_LOOP_RTOL if name.startswith("sampler") else INT8_STEP_RTOL)
        assert 1e-5 < c["rel_rms_diff"] <= c["rtol"]  # an approximation, not a copy of the fp32 graph
    assert checks["denoiser"]["rtol"] is None and checks["denoiser"]["rel_rms_diff"] < 1e-5


def test_relative_bound_fails_with_the_figures():
    expected = {"eps": np.ones((2, 3))}
    check = compare_outputs("denoiser_int8", "onnx", {}, {"eps": np.full((2, 3), 1.5)}, expected, None, rtol=0.1)
    assert not check.passed and "relative RMS diff 0.5 > rtol 0.1" in check.error
    nan = compare_outputs("denoiser_int8", "onnx", {}, {"eps": np.full((2, 3), np.nan)}, expected, None, rtol=0.1)
    assert not nan.passed and "non-finite" in nan.error
    assert relative_rms(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0


def test_int8_needs_onnx(tmp_path, small_model):
    with pytest.raises(ValueError, match="int8=True needs the 'onnx' format"):
        export.export_bundle(small_model, tmp_path / "b", formats=("torchscript",), int8=True)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_int8_modes_agree_and_stay_near_fp32(bundle, eta):
    fp32 = runtime.load(bundle.path, provider="cpu").sample(4, num_steps=10, seed=3, eta=eta, mode="fused")
    s = runtime.load(bundle.path, precision="int8")
    assert s.device == "cpu" and s.precision == "int8"
    out = {mode: s.sample(4, num_steps=10, seed=3, eta=eta, mode=mode) for mode in runtime.MODES}
    for mode in ("fused", "step"):
        np.testing.assert_allclose(out[mode], out["loop"], rtol=0, atol=1e-5)
    assert 1e-5 < relative_rms(out["loop"], fp32) <= INT8_LOOP_RTOL


def test_int8_sessions_are_the_int8_graphs(bundle):
    s = runtime.load(bundle.path, provider="cpu", precision="int8")
    s.sample(1, num_steps=2, mode="step")
    assert s.artifacts_in_use == ["ddim_step", "denoiser_int8"]  # the DDIM step has no int8 variant


def test_precision_errors(bundle, tmp_path):
    with pytest.raises(ValueError, match=r"unknown precision 'fp16': expected one of \['fp32', 'int8'\]"):
        runtime.load(bundle.path, precision="fp16")
    with pytest.raises(ValueError, match="CPU provider only"):
        runtime.load(bundle.path, provider="cuda", precision="int8")
    plain = tmp_path / "plain"
    shutil.copytree(bundle.path, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    manifest["artifacts"] = {k: v for k, v in manifest["artifacts"].items() if not k.endswith("_int8")}
    (plain / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"has no int8 artifacts: re-export it with int8=True \(diffzoo export --int8\)"):
        runtime.load(plain, precision="int8")
    assert main(["sample", str(plain), "--precision", "int8", "--out", str(tmp_path / "s.png")]) == 2
    assert not (tmp_path / "s.png").exists()


def test_cli_export_and_sample_int8(tmp_path, capsys):
    torch.manual_seed(0)
    out = tmp_path / "b"
    assert main(["export", "--model", "conv", "--hidden", "8", "--size", "8", "--out", str(out), "--formats", "onnx", "--solvers", "ddim",
                 "--int8"]) == 0
    text = capsys.readouterr().out
    assert "sampler_int8" in text and "<= 30%" in text
    assert main(["sample", str(out), "--precision", "int8", "--n", "2", "--steps", "3", "--out", str(tmp_path / "x.npy")]) == 0
    assert "int8, CPUExecutionProvider" in capsys.readouterr().out
    assert np.load(tmp_path / "x.npy").shape == (2, 3, 8, 8)
