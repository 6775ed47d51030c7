"""Bring your own model: diffusers UNet2DModel folders through the zoo entry, training, export, the runtime and back.

A small UNet2DModel (two blocks, one with attention) saved with ``save_pretrained`` stands in for a
user's folder; one bundle of it is exported per session (about a minute: the torch.export-based
exporter traces diffusers' blocks). The full DDPM CIFAR-10 architecture is one slow test.
"""

from __future__ import annotations

import dataclasses
import json
import re
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="the diffusers extra (in the test extra) is not installed")
from diffusers import (  # noqa: E402
    DDIMPipeline,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)

import export  # noqa: E402
import runtime  # noqa: E402
import zoo  # noqa: E402
from runtime.apps.cli import main  # noqa: E402
from export.bundle import VERIFY_STEPS  # noqa: E402
from zoo.diffusion import ddim_step  # noqa: E402
from zoo.diffusers_unet import DDPM_CIFAR10, SCHEDULERS, load_pretrained, save_pretrained, scheduler_schedule  # noqa: E402

SMALL_UNET = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                  norm_num_groups=8, attention_head_dim=8)


def _folder(path, scheduler=None, seed=0, **unet):
    torch.manual_seed(seed)
    UNet2DModel(**{**SMALL_UNET, **unet}).save_pretrained(path)
    if scheduler is not None:
        scheduler.save_config(path)
    return path


def _ddim_images(folder, x_T: torch.Tensor, steps: int, eps_rule: str = "model") -> np.ndarray:
    """diffusers' own DDIMPipeline on the folder, from x_T (its generator draws x_T exactly as torch.randn does);
    ``eps_rule`` "clipped" is its ``use_clipped_model_output=True``."""
    pipe = DDIMPipeline(UNet2DModel.from_pretrained(folder), DDIMScheduler.from_pretrained(folder))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=len(x_T), generator=torch.Generator().manual_seed(0), num_inference_steps=steps, eta=0.0,
               output_type="np", use_clipped_model_output=eps_rule == "clipped")
    assert torch.equal(torch.randn(x_T.shape, generator=torch.Generator().manual_seed(0)), x_T)
    return out.images.transpose(0, 3, 1, 2).astype(np.float64)  # (B, C, H, W) in [0, 1]


def _to_unit(x) -> np.ndarray:
    return (np.asarray(x, np.float64) / 2 + 0.5).clip(0, 1)


def _fp64_drift(model, schedule, x_T, steps, clip_range, eps_rule="clipped") -> float:
    """The eager sampler's own float32 error against float64 on these inputs: the yardstick of the bounds below."""
    import copy

    rule = {"clip_range": clip_range, "eps_rule": eps_rule}
    with torch.inference_mode():
        x32 = zoo.sample(model, schedule, x_T, num_steps=steps, **rule)
        x64 = zoo.sample(copy.deepcopy(model).double(), schedule, x_T.double(), num_steps=steps, **rule)
    return float(np.abs(_to_unit(x32) - _to_unit(x64)).max())


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("diffusers") / "unet", DDIMScheduler(beta_schedule="squaredcos_cap_v2"))


@pytest.fixture(scope="session")
def diffusers_bundle(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "diffusers"
    # DDIM alone (the solver diffusers' pipelines are compared with); a diffusers UNet's DPM-Solver++ graphs are exported
    # and checked in test_a_class_conditional_unet_takes_guided_generations_inputs
    assert main(["export", "--diffusers", str(folder), "--solvers", "ddim", "--out", str(out)]) == 0
    return out


def test_a_parameter_the_network_reads_transposed_is_stored_once_and_the_loop_transposes_it_once(diffusers_bundle):
    """A linear layer's weight (the network reads its transpose) stays a parameter referred to by name; the nodes that
    transpose or reshape parameters depend on the weights alone, and the whole-loop graph runs them once, before its
    Loop."""
    import onnx

    from export.format.graphs import Weights, external_tensors

    graphs = {p.name: onnx.load(str(p), load_external_data=False) for p in diffusers_bundle.glob("*.onnx")}
    weights = Weights.of_file(diffusers_bundle / "weights.safetensors")
    fused = graphs["fused_step.onnx"].graph
    names = {t.name for t in external_tensors(graphs["fused_step.onnx"])}
    assert len(names) == len([k for k in weights.stored if not k.endswith("num_batches_tracked")])
    reshaped = [n for n in fused.node if n.op_type in ("Transpose", "Reshape") and n.input[0] in names]
    assert "Transpose" in {n.op_type for n in reshaped}
    sampler = graphs["sampler.onnx"].graph
    outer = {n.output[0] for n in sampler.node if n.op_type in ("Transpose", "Reshape")}
    assert {f"step/{n.output[0]}" for n in reshaped} <= outer
    body = next(n for n in sampler.node if n.op_type == "Loop").attribute[0].g
    invariant = {t.name for t in sampler.initializer} | {o for n in sampler.node for o in n.output}
    # no node of the Loop's body depends on the weights alone (it would run again on every step)
    assert not [n.name for n in body.node if n.input and all(i in invariant for i in n.input if i)]


def test_a_folder_is_the_registered_entry_and_predicts_what_diffusers_predicts(folder):
    p = load_pretrained(folder)
    unet = UNet2DModel.from_pretrained(folder).eval()
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([0, 500, 999])
    with torch.no_grad():
        assert torch.equal(p.model(x, t), unet(x, t).sample)
    assert p.model.name == "diffusers_unet" and "diffusers_unet" in zoo.available()
    assert (p.schedule.name, p.clip_range, p.spacing) == ("cosine", 1.0, "leading")
    config = dataclasses.asdict(p.model.config)  # what a manifest and a checkpoint store
    assert json.loads(json.dumps(config)) == config
    rebuilt = zoo.build("diffusers_unet", **config)
    assert rebuilt.config == p.model.config and rebuilt.conditioning is None
    assert zoo.parameter_count("diffusers_unet", **config) == sum(q.numel() for q in unet.parameters())
    with pytest.raises(ValueError, match=r"timesteps 0..1000 are out of range"):
        p.model(x, torch.tensor([0, 1, 1000]))


SCHEDULES = [
    ({"beta_schedule": "linear"}, "linear"),
    ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, "scaled_linear"),
    ({"beta_schedule": "squaredcos_cap_v2"}, "cosine"),
    ({"trained_betas": np.linspace(1e-4, 0.03, 500).tolist(), "num_train_timesteps": 500}, "trained"),
]


@pytest.mark.parametrize("cls", [getattr(diffusers, name) for name in SCHEDULERS])  # DDPM's and every solver's
@pytest.mark.parametrize("kwargs,name", SCHEDULES)
def test_scheduler_configs_map_onto_the_same_alpha_bars(cls, kwargs, name, tmp_path):
    scheduler = cls(**kwargs)
    scheduler.save_config(tmp_path)  # as a user's folder holds it: every key this diffusers version writes
    schedule, clip, spacing = scheduler_schedule(json.loads((tmp_path / "scheduler_config.json").read_text()))
    assert schedule.name == name and schedule.num_train_timesteps == scheduler.config.num_train_timesteps
    # diffusers computes in float32, diffzoo in float64: they agree to float32's rounding
    np.testing.assert_allclose(schedule.alphas_cumprod, scheduler.alphas_cumprod.double().numpy(), rtol=2e-6, atol=1e-7)
    clipped = "clip_sample" in scheduler.config
    assert clip == (1.0 if clipped else None)
    for kind in ("leading", "trailing", "linspace"):  # the spacing returned builds the scheduler's own grid, or None
        spaced = cls(**kwargs, timestep_spacing=kind)
        spaced.set_timesteps(20)
        got = scheduler_schedule({**spaced.config, "_class_name": cls.__name__})[2]  # as save_config writes it
        same = np.array_equal(spaced.timesteps.numpy(), zoo.ddim_timesteps(schedule.num_train_timesteps, 20, kind))
        assert got == (kind if same else None), (kind, got)
        assert same or cls not in (DDPMScheduler, DDIMScheduler), kind  # DDIM's grids are diffzoo's
    assert scheduler_schedule({**scheduler.config, "clip_sample": False} if clipped else dict(scheduler.config))[1] is None


def test_unipc_configs_that_are_not_diffzoos_unipc_are_refused_by_name():
    from diffusers import UniPCMultistepScheduler

    config = {**UniPCMultistepScheduler().config, "_class_name": "UniPCMultistepScheduler"}
    assert scheduler_schedule(config)[1:] == (None, None)  # no clip; its linspace grid is not diffzoo's
    for key, value in (("solver_type", "bh1"), ("predict_x0", False), ("disable_corrector", [0]), ("lower_order_final", False),
                       ("solver_order", 3), ("clip_sample", True)):
        with pytest.raises(ValueError, match=re.escape(f"scheduler config: {key}={value!r} is not supported")):
            scheduler_schedule({**config, key: value})
    dpm = {k: v for k, v in config.items() if k not in ("predict_x0", "disable_corrector", "solver_p")}
    with pytest.raises(ValueError, match=r"solver_type='bh2' is not supported: expected 'midpoint'"):  # DPM-Solver's own
        scheduler_schedule({**dpm, "_class_name": "DPMSolverMultistepScheduler"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['predict_x0'\]"):  # UniPC's keys are UniPC's alone
        scheduler_schedule({**dpm, "_class_name": "DPMSolverMultistepScheduler", "solver_type": "midpoint", "predict_x0": True})


@pytest.mark.parametrize("change,key", [
    ({"prediction_type": "v_prediction"}, "prediction_type"),
    ({"prediction_type": "sample"}, "prediction_type"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule"),
    ({"thresholding": True}, "thresholding"),
    ({"_class_name": "PNDMScheduler"}, "_class_name"),
    ({"timestep_spacing": "karras"}, "timestep_spacing"),
    ({"steps_offset": 1}, "steps_offset"),
    ({"skip_prk_steps": True}, "skip_prk_steps"),
])
def test_scheduler_keys_diffzoo_cannot_honour_are_refused_by_name(change, key):
    config = {**DDIMScheduler().config, **change}
    with pytest.raises(ValueError, match=rf"my.json: .*{key}"):
        scheduler_schedule(config, "my.json")


def test_export_from_a_folder_verifies_every_artifact_and_samples_in_every_mode(diffusers_bundle, folder):
    m = export.load_manifest(diffusers_bundle)
    assert m["model"]["name"] == "diffusers_unet" and m["schedule"]["name"] == "cosine" and m["clip_range"] == 1.0
    assert m["eps_rule"] == "model"  # diffusers' DDIMScheduler default, so that its pipelines' images are equalled
    assert m["extra"]["diffusers"]["spacing"] == "leading" and m["data"]["shape"] == [3, 8, 8]
    assert len(m["verification"]) == 10 and all(c["passed"] and c["atol_source"] == "derived" for c in m["verification"])
    for eta in (0.0, 1.0):  # every mode against the eager UNet2DModel, within the derived bounds
        report = runtime.parity(diffusers_bundle, provider="cpu", num_steps=6, batch=2, eta=eta)
        assert report.passed, report.format_table()
    model, schedule, _ = export.load_model(diffusers_bundle)
    assert torch.equal(model.unet.conv_in.weight, UNet2DModel.from_pretrained(folder).conv_in.weight)


def test_the_bundle_samples_the_images_diffusers_ddim_loop_samples(diffusers_bundle, folder):
    x_T = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    theirs = _ddim_images(folder, x_T, steps=10)
    sampler = runtime.load(diffusers_bundle, provider="cpu")
    p = load_pretrained(folder)
    bound = 10 * _fp64_drift(p.model, p.schedule, x_T, 10, p.clip_range, p.eps_rule) + 1e-5
    for mode in ("loop", "fused", "step"):
        ours = _to_unit(sampler.run_batch(sampler.plan(n=4, num_steps=10, mode=mode), x_T.numpy()))
        assert np.abs(ours - theirs).max() <= bound, (mode, np.abs(ours - theirs).max(), bound)


def test_eps_rule_clipped_equals_diffusers_use_clipped_model_output(folder):
    """The clipped rule on a folder's model is ``DDIMPipeline(...)(use_clipped_model_output=True)``; the two rules differ
    (export bakes whichever the bundle records into its graphs and verifies them against this eager sampler)."""
    x_T = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    clipped, plain = (_ddim_images(folder, x_T, steps=10, eps_rule=r) for r in ("clipped", "model"))
    p = load_pretrained(folder)
    bound = 10 * _fp64_drift(p.model, p.schedule, x_T, 10, p.clip_range, "clipped") + 1e-5
    assert np.abs(clipped - plain).max() > 100 * bound  # the random UNet's x0 is clipped: the rule matters here
    with torch.inference_mode():
        ours = _to_unit(zoo.sample(p.model, p.schedule, x_T, num_steps=10, clip_range=p.clip_range, eps_rule="clipped"))
    assert np.abs(ours - clipped).max() <= bound, (np.abs(ours - clipped).max(), bound)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_each_eps_rule_is_the_ddim_scheduler_step_diffusers_computes(eta):
    """``ddim_step`` with eps_rule "model" / "clipped" is ``DDIMScheduler.step`` with use_clipped_model_output
    False / True, on inputs whose x0 the clip changes (the variance noise given, as diffusers takes it)."""
    s = DDIMScheduler(beta_schedule="squaredcos_cap_v2")
    s.set_timesteps(10)
    t, t_prev = int(s.timesteps[3]), int(s.timesteps[4])
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn((2, 3, 4, 4), generator=g, dtype=torch.float64) * 2 for _ in range(3))
    a = s.alphas_cumprod.double()
    for rule, clipped_output in (("model", False), ("clipped", True)):
        theirs = s.step(eps, t, x, eta=eta, use_clipped_model_output=clipped_output, variance_noise=z / 2).prev_sample
        ours = ddim_step(x, eps, float(a[t]), float(a[t_prev]), eta=eta, noise=z / 2 if eta else None, eps_rule=rule)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)  # diffusers forms its alpha-bar powers in float32
    theirs_model = s.step(eps, t, x, eta=eta, variance_noise=z / 2).prev_sample
    assert float((theirs - theirs_model).abs().max()) > 0.1  # the clip engaged: the two rules differ here


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc"])
def test_the_multistep_solvers_match_diffusers_schedulers(folder, solver):
    """diffzoo's DPM-Solver++(2M) and UniPC on diffusers' timestep grid compute DPMSolverMultistepScheduler's and
    UniPCMultistepScheduler's images (its defaults: bh2, order 2, corrector on; they clip nothing: clip_range None,
    as a DPM-Solver scheduler config maps to)."""
    import copy

    from zoo.solvers import solve

    p = load_pretrained(folder)
    s = getattr(diffusers, zoo.solvers.get_solver(solver).diffusers).from_config(DDIMScheduler.load_config(folder))
    s.set_timesteps(8)
    x_T = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    x = x_T.clone()
    with torch.inference_mode():
        for t in s.timesteps:
            x = s.step(p.model.unet(x, t).sample, t, x).prev_sample
        ts = s.timesteps.numpy().astype(np.int64)
        ours, ours64 = (solve(solver, lambda x, t, m=m: m(x, torch.full((len(x),), t)), x_T.to(dtype), ts,
                              torch.tensor(p.schedule.alphas_cumprod).to(dtype), clip_range=None)
                        for m, dtype in ((p.model, torch.float32), (copy.deepcopy(p.model).double(), torch.float64)))
    bound = 10 * float((ours.double() - ours64).abs().max())  # the eager sampler's own float32 error, as for export
    assert float((ours - x).abs().max()) <= bound, (float((ours - x).abs().max()), bound)


def test_euler_ancestral_matches_diffusers_scheduler_with_the_same_noise(folder, monkeypatch):
    """diffzoo's Euler ancestral (variance-preserving x) on diffusers' grid computes EulerAncestralDiscreteScheduler's
    images (variance-exploding x = x / sqrt(alpha_bar)) when the scheduler's noise draws are replaced by the same noise."""
    import copy

    import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler

    from zoo.solvers import solve

    p = load_pretrained(folder)
    s = euler.EulerAncestralDiscreteScheduler.from_config(DDIMScheduler.load_config(folder))
    s.set_timesteps(8)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn((2, 3, 8, 8), generator=g)
    z = torch.randn((8, 2, 3, 8, 8), generator=g)
    draws = iter(z)
    monkeypatch.setattr(euler, "randn_tensor", lambda *a, **k: next(draws))
    x = x_T * (s.sigmas[0] ** 2 + 1) ** 0.5  # the variance-exploding start
    with torch.inference_mode():
        for t in s.timesteps:
            x = s.step(p.model.unet(s.scale_model_input(x, t), t).sample, t, x).prev_sample
        ts = s.timesteps.numpy().astype(np.int64)
        ours, ours64 = (solve("euler_ancestral", lambda x, t, m=m: m(x, torch.full((len(x),), t)), x_T.to(dtype), ts,
                              torch.tensor(p.schedule.alphas_cumprod).to(dtype), clip_range=None,
                              noise=lambda i, d=dtype: z[i].to(d))
                        for m, dtype in ((p.model, torch.float32), (copy.deepcopy(p.model).double(), torch.float64)))
    assert next(draws, None) is None  # one draw a step, as ours (the last adds none of it: sigma_up = 0 there)
    bound = 10 * float((ours.double() - ours64).abs().max())  # the eager sampler's own float32 error, as for export
    assert float((ours - x).abs().max()) <= bound, (float((ours - x).abs().max()), bound)


def test_train_a_diffusers_unet_and_write_it_back_for_diffusers(folder, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "back"
    assert main(["train", "--model", "diffusers_unet", "--model-config", str(folder / "config.json"), "--data", "digits",
                 "--size", "8", "--steps", "30", "--batch", "16", "--lr", "2e-3", "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model_config"]["unet"]["block_out_channels"] == [16, 32]
    assert main(["export", "--checkpoint", str(run), "--to-diffusers", "--out", str(out)]) == 0
    unet = UNet2DModel.from_pretrained(out).eval()
    assert unet.config.in_channels == unet.config.out_channels == 1
    model, schedule, _ = zoo.weights.load_weights(run / "last" / "ema.safetensors")
    assert model.config.channels == 1  # the data decides: in_channels and out_channels follow it
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), model.unet.state_dict().values(), strict=True))
    x_T = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    theirs = _ddim_images(out, x_T, steps=20, eps_rule="clipped")  # diffzoo's models use the clipped rule
    with torch.inference_mode():
        ours = _to_unit(zoo.sample(model, schedule, x_T, num_steps=20))
    bound = 10 * _fp64_drift(model, schedule, x_T, 20, 1.0) + 1e-5
    assert np.abs(ours - theirs).max() <= bound, (np.abs(ours - theirs).max(), bound)
    assert main(["export", "--checkpoint", str(run), "--to-diffusers", "--out", str(out)]) == 2  # never overwritten
    assert "holds a diffusers UNet2DModel folder" in capsys.readouterr().err


def test_a_class_conditional_unet_takes_guided_generations_inputs(tmp_path):
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    config = tmp_path / "config.json"
    plain = {"down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2}  # no attention: a cheaper export
    config.write_text(json.dumps({**SMALL_UNET, **plain}))
    assert main(["train", "--model", "diffusers_unet", "--model-config", str(config), "--data", "digits", "--conditional",
                 "--size", "8", "--steps", "4", "--batch", "8", "--out", str(run)]) == 0
    model, _, _ = zoo.weights.load_weights(run / "last" / "ema.safetensors")
    assert model.config.num_classes == 10 and model.unet.config.num_class_embeds == 11 and model.conditioning.inputs[0].null == 10
    assert main(["export", "--checkpoint", str(run), "--out", str(bundle), "--formats", "onnx", "--solvers", "dpmpp_2m"]) == 0
    m = export.load_manifest(bundle)
    assert m["classes"]["count"] == 10 and all(c["passed"] for c in m["verification"])
    report = runtime.parity(bundle, provider="cpu", num_steps=4, batch=3, labels=np.array([0, 3, 9]), solver="dpmpp_2m",
                            guidance=np.array([1.0, 3.0, 0.0], np.float32), modes=["loop", "fused"])
    assert report.passed, report.format_table()


def _bad(tmp_path, capsys, *argv) -> str:
    assert main(["export", *argv, "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "never").exists(), err
    return err


def test_bad_folders_are_one_line_naming_the_file_and_key(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty/config.json' does not exist" in _bad(tmp_path, capsys, "--diffusers", str(empty))
    for cls in ("UNet2DConditionModel", "AutoencoderKL"):
        other = tmp_path / cls
        other.mkdir()
        (other / "config.json").write_text(json.dumps({"_class_name": cls, "in_channels": 4}))
        err = _bad(tmp_path, capsys, "--diffusers", str(other))
        assert f"{cls}/config.json': _class_name='{cls}' is not supported" in err
    mismatched = _folder(tmp_path / "mismatched")
    config = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps({**config, "block_out_channels": [16, 48]}))
    err = _bad(tmp_path, capsys, "--diffusers", str(mismatched))
    assert "diffusion_pytorch_model.safetensors' does not match" in err and "config.json" in err and "size mismatch" in err
    vpred = _folder(tmp_path / "vpred", DDIMScheduler(prediction_type="v_prediction"))
    err = _bad(tmp_path, capsys, "--diffusers", str(vpred))
    assert "scheduler_config.json': prediction_type='v_prediction' is not supported" in err
    pndm = _folder(tmp_path / "pndm")
    (pndm / "scheduler_config.json").write_text(json.dumps({"_class_name": "PNDMScheduler", "beta_schedule": "linear"}))
    assert "_class_name='PNDMScheduler' is not supported" in _bad(tmp_path, capsys, "--diffusers", str(pndm))
    sigmoid = _folder(tmp_path / "sigmoid", DDPMScheduler(beta_schedule="sigmoid"))
    assert "beta_schedule='sigmoid' is not supported" in _bad(tmp_path, capsys, "--diffusers", str(sigmoid))
    pickled = _folder(tmp_path / "pickled")
    (pickled / "diffusion_pytorch_model.safetensors").rename(pickled / "diffusion_pytorch_model.bin")
    assert "a .bin is a pickle, which diffzoo does not load" in _bad(tmp_path, capsys, "--diffusers", str(pickled))
    fourier = _folder(tmp_path / "fourier")
    (fourier / "config.json").write_text(json.dumps({**config, "time_embedding_type": "fourier"}))
    assert "time_embedding_type='fourier' is not supported" in _bad(tmp_path, capsys, "--diffusers", str(fourier))
    assert "--diffusers and --checkpoint each name a model" in _bad(tmp_path, capsys, "--diffusers", str(vpred),
                                                                    "--checkpoint", str(vpred))
    with pytest.raises(ValueError, match="only a 'diffusers_unet' model can be written as a diffusers folder; this is 'unet'"):
        save_pretrained(zoo.build("unet", hidden=8), zoo.linear_schedule(), tmp_path / "nope")
    assert main(["train", "--model", "diffusers_unet", "--hidden", "32", "--out", str(tmp_path / "r")]) == 2
    assert "--hidden 32 does not apply to the 'diffusers_unet' model" in capsys.readouterr().err


def test_bad_values_in_a_folder_name_the_file_and_key_round_4(tmp_path, capsys):
    """Issue 28: wrongly typed keys, a FIFO for a config, a learned time embedding shorter than T."""
    base = _folder(tmp_path / "base", DDIMScheduler())
    config = json.loads((base / "config.json").read_text())

    def variant(name, unet=None, scheduler=None):
        folder = tmp_path / name
        shutil.copytree(base, folder)
        if unet is not None:
            (folder / "config.json").write_text(json.dumps({**config, **unet}))
        if scheduler is not None:
            sched = json.loads((folder / "scheduler_config.json").read_text())
            (folder / "scheduler_config.json").write_text(json.dumps({**sched, **scheduler}))
        return folder

    err = _bad(tmp_path, capsys, "--diffusers", str(variant("size", unet={"sample_size": "16"})))
    assert "size/config.json': sample_size='16' is invalid" in err
    err = _bad(tmp_path, capsys, "--diffusers", str(variant("clip", scheduler={"clip_sample_range": "one"})))
    assert "clip/scheduler_config.json'" in err and "clip_sample_range='one' is not supported" in err
    learned = variant("learned", unet={"time_embedding_type": "learned", "num_train_timesteps": 10})
    err = _bad(tmp_path, capsys, "--diffusers", str(learned))  # the scheduler's T is 1000: timesteps past 9 had no embedding
    assert "learned/config.json': num_train_timesteps=10 (the learned time embedding's size) differs" in err
    fifo = variant("fifo")
    (fifo / "scheduler_config.json").unlink()
    os.mkfifo(fifo / "scheduler_config.json")  # read, it would block; skipped, the defaults would be used silently
    assert "fifo/scheduler_config.json' is not a regular file" in _bad(tmp_path, capsys, "--diffusers", str(fifo))


def test_train_checks_the_size_against_the_model_before_writing(folder, tmp_path, capsys):
    args = ["train", "--model", "diffusers_unet", "--model-config", str(folder / "config.json"), "--data", "digits",
            "--steps", "2", "--batch", "4"]
    assert main([*args, "--size", "9", "--out", str(tmp_path / "nine")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--size 9 is invalid for this 'diffusers_unet' model" in err and "multiples of 2" in err
    assert main([*args, "--size", "16", "--out", str(tmp_path / "sixteen")]) == 2  # the config samples at 8
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--size 16 differs from the model config's sample_size [8, 8]" in err
    assert list(tmp_path.iterdir()) == []  # no partial run


def test_to_diffusers_force_replaces_only_a_folder_it_wrote(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "diffusers_unet", "--model-config", str(folder / "config.json"), "--data", "digits",
                 "--size", "8", "--steps", "2", "--batch", "4", "--out", str(run)]) == 0
    capsys.readouterr()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "thesis.tex").write_text("years of work")
    assert main(["export", "--checkpoint", str(run), "--to-diffusers", "--force", "--out", str(mine)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a diffusers UNet2DModel folder as diffzoo writes it" in err
    assert (mine / "thesis.tex").read_text() == "years of work" and (mine / "config.json").read_text() == '{"my": "settings"}'
    out = tmp_path / "back"
    assert main(["export", "--checkpoint", str(run), "--to-diffusers", "--out", str(out)]) == 0
    assert main(["export", "--checkpoint", str(run), "--to-diffusers", "--force", "--out", str(out)]) == 0  # its own: replaced
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                     "scheduler_config.json"]


def test_to_diffusers_on_a_full_disk_is_one_line_and_leaves_nothing(folder, tmp_path, small_fs, capsys):
    run = tmp_path / "run"
    unet = {**json.loads((folder / "config.json").read_text()), "block_out_channels": [64, 128]}  # more than 300 KB of weights
    (tmp_path / "big.json").write_text(json.dumps(unet))
    assert main(["train", "--model", "diffusers_unet", "--model-config", str(tmp_path / "big.json"), "--data", "digits",
                 "--size", "8", "--steps", "1", "--batch", "4", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run), "--to-diffusers", "--out", str(small_fs / "back")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the diffusers folder" in err and "nothing was written" in err, err
    assert list(small_fs.iterdir()) == []


def test_an_untrained_unets_loop_is_verified_where_its_bound_means_something(diffusers_bundle):
    """A random UNet2DModel is chaotic over 50 clipped steps (float32 against float64 apart by O(1)): its whole-loop
    graphs are verified over fewer steps, with a bound below 0.1 and a note saying why."""
    loops = [c for c in export.load_manifest(diffusers_bundle)["verification"] if "steps" in c["shape"]]
    assert loops and all(c["passed"] for c in loops)
    for c in loops:
        assert c["atol"] <= 0.1 or "grossly wrong" in c["note"], c
        assert (c["shape"]["steps"] == VERIFY_STEPS) == (c["note"] is None), c


def test_without_diffusers_the_cli_names_the_extra(folder, tmp_path):
    code = ("import sys; sys.modules['diffusers'] = None\nfrom runtime.apps.cli import main\n"
            f"sys.exit(main(['export', '--diffusers', {str(folder)!r}, '--out', {str(tmp_path / 'b')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pip install -e '.[diffusers]' in the diffzoo checkout" in r.stderr, r.stderr


@pytest.mark.slow
def test_the_ddpm_cifar10_architecture_exports_and_samples_in_every_mode(tmp_path):
    """Full size: 35.7 M parameters, attention at 16x16, 32x32 RGB (random init: nothing can be downloaded here)."""
    folder = tmp_path / "ddpm-cifar10"
    torch.manual_seed(0)
    UNet2DModel(**DDPM_CIFAR10).save_pretrained(folder)
    DDPMScheduler().save_config(folder)
    p = load_pretrained(folder)
    assert zoo.parameter_count("diffusers_unet", **dataclasses.asdict(p.model.config)) == 35_746_307
    b = export.export_bundle(p.model, tmp_path / "bundle", schedule=p.schedule, clip_range=p.clip_range,
                             example_shape=(3, 32, 32), formats=["onnx"])
    assert all(c["passed"] and c["atol_source"] == "derived" for c in b.checks)
    for solver in ("ddim", "dpmpp_2m"):
        report = runtime.parity(b.path, provider="cpu", num_steps=3, batch=1, solver=solver)
        assert report.passed, report.format_table()


@pytest.mark.slow
def test_the_peer_bench_times_every_loop_on_diffusers_grid(folder, tmp_path, capsys):
    out = tmp_path / "peer.json"
    assert main(["bench", "--diffusers", str(folder), "--batches", "2", "--repeats", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    f = res["footprint"]
    assert f["bundle_mb"] > 0 and f["export_peak_rss_mb"] > 0 and set(f["sample_peak_rss_mb"]) == {"loop", "fused", "step"}
    assert [(r["batch"], r["solver"], r["steps"]) for r in res["runs"]] == [(2, "ddim", 50), (2, "dpmpp_2m", 20)]
    for r in res["runs"]:
        assert set(r["backends"]) == {"diffusers", "diffusers-compile", "diffzoo-loop", "diffzoo-fused", "diffzoo-step"}
        assert r["backends"]["diffusers"]["vs_diffusers"] == 1.0
        assert all(np.isfinite(b["drift_vs_diffusers"]) and b["median_s"] > 0 for b in r["backends"].values())
    assert "fastest diffzoo mode" in capsys.readouterr().out
