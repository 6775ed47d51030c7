"""Unit tests of small library pieces on their own: the LR schedule, staged directories, the Loop builder."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.format.artifacts import artifact_specs
from export.loop import build_sampler_graph
from zoo.files import atomic_write, default_mode, staged_dir, write_synced
from zoo.training.train import TrainConfig, lr_at

# --- the learning-rate schedule -------------------------------------------------------------------

def test_lr_warms_up_linearly_then_decays_by_cosine_to_a_tenth():
    cfg = TrainConfig(steps=200, lr=1e-3)  # warm-up over 200 // 50 = 4 steps
    lrs = [lr_at(cfg, s) for s in range(cfg.steps)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4] == pytest.approx(1e-3)  # progress 0: the peak
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # non-increasing after the warm-up
    assert lrs[4 + 98] == pytest.approx(1e-4 + 9e-4 * 0.5, rel=1e-3)  # half way: the cosine's midpoint
    assert lr_at(cfg, cfg.steps) == pytest.approx(1e-4)  # ends at a tenth of the peak
    assert lr_at(TrainConfig(steps=200, lr=1e-3, lr_schedule="constant"), 150) == 1e-3


def test_lr_schedule_of_a_short_run_still_warms_up_one_step():
    cfg = TrainConfig(steps=10, lr=2e-4)
    assert lr_at(cfg, 0) == pytest.approx(2e-4)  # max(1, 10 // 50) = 1 warm-up step
    assert lr_at(cfg, 9) < lr_at(cfg, 1)


# --- staged directories and synced writes ------------------------------------------------------------

def test_staged_dir_publishes_only_a_finished_directory(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.partial-") and not out.exists()
        write_synced(tmp / "a.bin", b"new")
    assert (out / "a.bin").read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert out.stat().st_mode & 0o777 == default_mode(directory=True)  # not mkdtemp's private 0o700

    with pytest.raises(RuntimeError, match="boom"):  # a failure half way: the old directory stays, nothing is left
        with staged_dir(out) as tmp:
            (tmp / "a.bin").write_bytes(b"half")
            raise RuntimeError("boom")
    assert (out / "a.bin").read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    with staged_dir(out) as tmp:  # a replacement swaps the whole directory: no file of the old one survives
        write_synced(tmp / "b.bin", lambda f: f.write(b"callable"))
    assert sorted(p.name for p in out.iterdir()) == ["b.bin"] and (out / "b.bin").read_bytes() == b"callable"


def test_atomic_write_takes_bytes_or_a_writer_and_leaves_no_temp_file(tmp_path):
    atomic_write(tmp_path / "x", b"1")
    atomic_write(tmp_path / "x", lambda f: f.write(b"22"))
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "x", lambda f: (f.write(b"3"), 1 / 0))
    assert os.listdir(tmp_path) == ["x"] and (tmp_path / "x").read_bytes() == b"22"


# --- the Loop builder, on hand-made step graphs (no torch, no export) ----------------------------------

def _step_graph(multistep: bool) -> onnx.ModelProto:
    """x_prev = x_t + w * t_prev (DDIM signature) or x_t + w * t_last, x0 = x_t (DPM-Solver++ signature); w = 1."""
    add = "t_last" if multistep else "t_prev"
    nodes = [
        helper.make_node("Cast", [add], ["add_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["add_f", "axes"], ["add_4d"]),
        helper.make_node("Mul", ["add_4d", "w"], ["scaled"]),
        helper.make_node("Add", ["x_t", "scaled"], ["x_prev"]),
    ]
    dims = ["batch", 1, "height", "width"]
    names = ["x_t", "x0_last", "t", "t_prev", "t_last"] if multistep else ["x_t", "t", "t_prev"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT if n.startswith("x") else TensorProto.INT64,
                                            dims if n.startswith("x") else ["batch"]) for n in names]
    outputs = [helper.make_tensor_value_info("x_prev", TensorProto.FLOAT, dims)]
    if multistep:
        nodes.append(helper.make_node("Identity", ["x_t"], ["x0"]))
        outputs.append(helper.make_tensor_value_info("x0", TensorProto.FLOAT, dims))
    inits = [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]), helper.make_tensor("w", TensorProto.FLOAT, [], [1.0])]
    graph = helper.make_graph(nodes, "step", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.mark.parametrize("multistep,expected", [(False, 5 + 2 - 1), (True, -1 + 9 + 5)])
def test_loop_builder_feeds_each_step_its_timesteps(multistep, expected):
    """timesteps [9, 5, 2]: t_prev = [5, 2, -1] and t_last = [-1, 9, 5], so x_0 = x_T + their sum."""
    model = build_sampler_graph(_step_graph(multistep), artifact_specs(1)["sampler_dpmpp" if multistep else "sampler"])
    onnx.checker.check_model(model, full_check=True)
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    assert {"step/w", "step/axes"} <= {i.name for i in model.graph.initializer}  # the weights live once, outside
    assert not loop.attribute[0].g.initializer
    x_T = np.random.default_rng(0).standard_normal((2, 1, 3, 4), dtype=np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (x0,) = sess.run(["x_0"], {"x_T": x_T, "timesteps": np.array([9, 5, 2], np.int64)})
    np.testing.assert_allclose(x0, x_T + expected, rtol=0, atol=1e-6)
    (one,) = sess.run(["x_0"], {"x_T": x_T, "timesteps": np.array([7], np.int64)})  # steps chosen at run time
    np.testing.assert_allclose(one, x_T + (-1.0), rtol=0, atol=1e-6)


# --- the solver table --------------------------------------------------------------------------------

def test_alpha_bars_is_the_one_step_rule_for_ints_arrays_and_tensors():
    import torch

    from zoo.diffusion import NO_STEP
    from zoo.solvers import alpha_bars

    table = np.linspace(0.99, 0.01, 10).astype(np.float32)
    assert alpha_bars(table, 5, 2, 8) == (table[5], table[2], table[8])
    assert alpha_bars(table, 0, NO_STEP, NO_STEP) == (table[0], 1.0, 0.0)  # after the last step: 1; before the first: 0
    assert alpha_bars(table, 3, 1) == (table[3], table[1])  # a solver that reads no earlier timestep gets none
    assert alpha_bars(table, 3, 1, 6, NO_STEP) == (table[3], table[1], table[6], 0.0)  # UniPC's t_last, t_last2
    t, tp, tl = np.array([5, 0, 9]), np.array([2, NO_STEP, 4]), np.array([NO_STEP, 3, 9])
    want = (table[t], np.array([table[2], 1.0, table[4]], np.float32), np.array([0.0, table[3], table[9]], np.float32))
    for got in (alpha_bars(table, t, tp, tl),
                [a.numpy() for a in alpha_bars(torch.from_numpy(table), *(torch.from_numpy(v) for v in (t, tp, tl)))]):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g, np.float32), w)


def test_solve_in_numpy_is_the_eager_torch_sampler():
    """The one host-side loop gives the eager sampler's images when the network is the same function in numpy."""
    import torch

    import zoo
    from zoo.solvers import SOLVERS, solve

    class Linear(torch.nn.Module):  # eps = 0.5 x: the same in torch and numpy
        config = None

        def forward(self, x, t):
            return 0.5 * x

    sched = zoo.cosine_schedule(1000)
    x_T = np.random.default_rng(0).standard_normal((2, 1, 4, 4), dtype=np.float32)
    ts = zoo.ddim_timesteps(1000, 7)
    z = np.random.default_rng(1).standard_normal((7, *x_T.shape), dtype=np.float32)  # for a solver that draws noise
    for solver in SOLVERS:
        eager = zoo.sample(Linear(), sched, torch.from_numpy(x_T), num_steps=7, solver=solver,
                           noise=torch.from_numpy(z)).numpy()
        host = solve(solver, lambda x, t: 0.5 * x, x_T, ts, sched.alphas_cumprod.astype(np.float32), noise=z.__getitem__)
        np.testing.assert_allclose(host, eager, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"Euler ancestral \(it draws noise every step\) needs `noise`: a \(S, B, C, H, W\)"):
        zoo.sample(Linear(), sched, torch.from_numpy(x_T), num_steps=7, solver="euler_ancestral")


def test_check_eta_refuses_eta_for_a_deterministic_solver():
    import re

    from zoo.solvers import SOLVER_TABLE, SOLVERS, check_eta

    # whether a run draws per-step noise: one definition, read by the samplers, the runtime, the server and parity
    assert [SOLVER_TABLE["ddim"].stochastic(eta) for eta in (0.0, 0.5, 1.0)] == [False, True, True]
    assert SOLVER_TABLE["dpmpp_2m"].stochastic(0.0) is False
    assert SOLVER_TABLE["euler_ancestral"].stochastic(0.0) is True  # it draws noise on every step, whatever eta says

    assert check_eta("ddim", np.float32(0.5)) == 0.5
    with pytest.raises(ValueError, match=r"eta=0.3 is invalid with solver 'dpmpp_2m', which is deterministic.*'ddim'"):
        check_eta("dpmpp_2m", 0.3)
    with pytest.raises(ValueError, match=r"eta=0.3 is invalid with solver 'unipc', which is deterministic.*'ddim'"):
        check_eta("unipc", 0.3)
    with pytest.raises(ValueError, match=r"eta=1.0 is invalid with solver 'euler_ancestral', which sets its own noise"):
        check_eta("euler_ancestral", 1.0)
    with pytest.raises(ValueError, match=r"unknown solver 'euler': expected one of " + re.escape(str(list(SOLVERS)))):
        check_eta("euler", 0.0)


# --- the bundle format ---------------------------------------------------------------------------------

def test_select_reads_what_the_manifest_records_and_falls_back_to_fp32():
    from export.format.artifacts import artifact_specs, select
    from export.format.manifest import artifact_entry

    artifacts = {name: artifact_entry(spec, {}) for name, spec in artifact_specs(1, int8=True).items()}
    assert select(artifacts, "sampler", "ddim") == "sampler"
    assert select(artifacts, "fused_step", "ddim", True, "int8") == "fused_step_eta_int8"
    assert select(artifacts, "step", "ddim", False, "int8") == "ddim_step"  # no int8 solver step: the fp32 one
    assert select(artifacts, "step", "ddim", False, "int8", fallback=False) is None
    assert select(artifacts, "fused_step", "dpmpp_2m") == "fused_step_dpmpp"
    assert select(artifacts, "fused_step", "dpmpp_2m", True) is None  # DPM-Solver++ has no stochastic variant
    renamed = {f"graph{i}": entry for i, entry in enumerate(artifacts.values())}  # names are not read, only records
    assert renamed[select(renamed, "sampler", "dpmpp_2m")]["body"] == "fused_step_dpmpp"


def test_check_output_refuses_before_any_work(tmp_path):
    from runtime.requests import check_output

    assert check_output(tmp_path / "a.png") == tmp_path / "a.png"
    (tmp_path / "d.png").mkdir()
    for path, message in [(tmp_path / "a.gif", "the suffix must be one of"), (tmp_path / "d.png", "it is a directory"),
                          (tmp_path / "missing" / "a.png", "does not exist"), ("", "is not a file name")]:
        with pytest.raises((ValueError, OSError), match=message):
            check_output(path)
    with pytest.raises(ValueError, match="4-channel images"):
        check_output(tmp_path / "a.png", channels=4)
    assert check_output(tmp_path / "report.anything", suffixes=None).name == "report.anything"
