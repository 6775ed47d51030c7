"""Bad input across the product: each case gets one clear error, before any work, and leaves nothing behind.

docs/ARCHITECTURE.md ("Bad input") lists what is covered here and elsewhere.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import zoo
from conftest import ZOO_MODELS
import zoo.resources
from export.format.manifest import BundleError, load_manifest
from runtime.apps.cli import build_parser, main
from zoo.weights import load_weights

# --- manifests and weights headers ----------------------------------------------------------------

def _mutations():
    def setter(path, value):
        def f(m):
            *head, last = path
            for k in head:
                m = m[k]
            m[last] = value
        return f

    def deleter(*path):
        def f(m):
            *head, last = path
            for k in head:
                m = m[k]
            del m[last]
        return f

    return [
        (deleter("files"), "lacks 'files'"),
        (setter(["files"], []), "files = [] is a list, expected dict"),
        (deleter("weights"), "lacks 'weights'"),
        (setter(["model"], "conv"), "model = 'conv' is a str, expected dict"),
        (deleter("model", "config"), "lacks 'model.config'"),
        (deleter("schedule"), "lacks 'schedule'"),
        (setter(["schedule", "num_train_timesteps"], "1000"), "schedule.num_train_timesteps = '1000' is a str, expected int"),
        (setter(["data", "shape"], "3,12,12"), "data.shape = '3,12,12' is a str, expected list"),
        (setter(["data", "shape"], [3, "12", 12]), "data.shape = [3, '12', 12] is invalid"),
        (setter(["artifacts"], ["sampler"]), "artifacts = ['sampler'] is a list, expected dict"),
        (setter(["artifacts", "sampler", "stochastic"], "no"), "artifacts.sampler.stochastic = 'no' is a str, expected bool"),
        (deleter("artifacts", "sampler", "files"), "lacks 'artifacts.sampler.files'"),
        (setter(["files", "weights.safetensors", "size"], "12"), "files.weights.safetensors.size = '12' is a str, expected int"),
        (setter(["clip_range"], "1"), "clip_range = '1' is a str, expected int or float or NoneType"),
    ]


@pytest.mark.parametrize("mutate,match", _mutations())
def test_a_manifest_with_a_missing_or_mistyped_key_is_one_error_naming_it(bundles, tmp_path, mutate, match):
    manifest = json.loads((bundles["conv"].path / "manifest.json").read_text())
    mutate(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))  # checked before any file it lists is opened
    with pytest.raises(BundleError) as e:
        load_manifest(tmp_path)
    assert match in str(e.value) and "manifest.json" in str(e.value) and "\n" not in str(e.value)


def test_the_cli_reports_a_mistyped_manifest_in_one_line(bundles, tmp_path, capsys):
    manifest = json.loads((bundles["conv"].path / "manifest.json").read_text())
    manifest["schedule"]["num_train_timesteps"] = "1000"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "schedule.num_train_timesteps = '1000' is a str, expected int" in err


@pytest.mark.parametrize("meta,match", [
    ({"schedule": {"name": "linear"}}, "lacks 'model'"),
    ({"model": {"name": "conv"}, "schedule": {}}, "lacks 'model.config'"),
    ({"model": {"name": "conv", "config": []}, "schedule": {}}, "model.config = [], expected a dict"),
    ({"model": ["conv"], "schedule": {}}, "model = ['conv'], expected a dict"),
])
def test_weights_metadata_without_the_model_is_one_error(tmp_path, capsys, meta, match):
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"diffzoo": json.dumps(meta)})
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("]", r"\]")):
        load_weights(path)
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "w.safetensors" in err and not (tmp_path / "b").exists()


# --- memory: estimated and refused before allocating -------------------------------------------------

@pytest.fixture
def eight_gb(monkeypatch):
    monkeypatch.setattr(zoo.resources, "available_memory", lambda: 8 * 10**9)


def test_a_model_too_large_for_memory_is_refused_before_allocating(eight_gb, capsys, tmp_path):
    n = zoo.parameter_count("residual", hidden=20_000)  # four 3x3 hidden-to-hidden convolutions: 14.4e9 weights
    assert 14.4e9 < n < 14.5e9
    with pytest.raises(zoo.resources.InsufficientMemoryError, match=rf"model 'residual' \({n:,} float32 parameters\) needs "
                                                                     r"about 57.6 GB, more than the 8 GB"):
        zoo.build("residual", hidden=20_000)
    assert main(["export", "--hidden", "20000", "--out", str(tmp_path / "b")]) == 2
    assert main(["train", "--hidden", "20000", "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("choose a smaller width" in line for line in err)
    assert "training 'residual'" in err[1]  # training counts gradients, AdamW moments and the EMA too
    assert list(tmp_path.iterdir()) == []
    zoo.build("residual", hidden=64)  # an ordinary model is unaffected


def test_training_memory_counts_more_than_the_weights(monkeypatch, tmp_path):
    n = zoo.parameter_count("residual", hidden=2000, channels=3)  # ~72e6 parameters: 0.29 GB of weights
    monkeypatch.setattr(zoo.resources, "available_memory", lambda: 10 * n)  # enough to build, not to train (20 B each)
    zoo.build("residual", hidden=2000)
    with pytest.raises(zoo.resources.InsufficientMemoryError, match="training 'residual'"):
        zoo.train.train(zoo.train.TrainConfig(model_config={"hidden": 2000}, steps=1, size=8), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_sampling_more_images_than_fit_is_refused_before_sampling(bundles, eight_gb, tmp_path, capsys):
    import runtime

    s = runtime.load(bundles["conv"].path, provider="cpu")
    with pytest.raises(zoo.resources.InsufficientMemoryError, match=r"20000000 images of \(3, 12, 12\)"):
        s.sample(20_000_000, num_steps=1)
    out = tmp_path / "x.npy"
    assert main(["sample", str(bundles["conv"].path), "--provider", "cpu", "--n", "20000000", "--batch-size", "20000000",
                 "--out", str(out)]) == 2
    assert "sample fewer images per call" in capsys.readouterr().err and not out.exists()


# --- values: numpy scalars welcome, timesteps in range -------------------------------------------------

def test_numpy_scalars_are_accepted_where_python_numbers_are(bundles):
    import runtime

    s = runtime.load(bundles["conv"].path, provider="cpu")
    want = s.sample(2, num_steps=3, seed=1, eta=0.5, batch_size=1)
    got = s.sample(np.int64(2), num_steps=np.int32(3), seed=np.uint8(1), eta=np.float32(0.5), batch_size=np.int64(1))
    np.testing.assert_array_equal(got, want)
    schedule = zoo.make_schedule("linear", num_train_timesteps=np.int64(100), beta_end=np.float32(0.02))
    assert type(schedule.num_train_timesteps) is int and json.dumps(schedule.to_dict())
    cfg = zoo.train.TrainConfig(steps=np.int64(3), lr=np.float32(1e-3), seed=np.int16(2), ema_decay=np.float64(0.9))
    assert (type(cfg.steps), type(cfg.lr), type(cfg.seed)) == (int, float, int)
    json.dumps(cfg.__dict__)  # what the trainer writes as config.json
    model = zoo.build("conv", hidden=np.int64(8)).eval()
    x = torch.randn(1, 3, 8, 8)
    a = zoo.ddim_step(x, model(x, torch.tensor([500])), 0.5, 0.6, eta=np.float32(0.5), noise=torch.zeros_like(x))
    b = zoo.ddim_step(x, model(x, torch.tensor([500])), 0.5, 0.6, eta=0.5, noise=torch.zeros_like(x))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"eta=1.5 is invalid: expected a finite number in 0.0..1.0"):
        zoo.ddim_step(x, x, 0.5, 0.6, eta=np.float32(1.5), noise=x)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_eager_models_refuse_timesteps_outside_their_schedule(name):
    model = zoo.build(name, hidden=8).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model(x, torch.tensor([0, 999]))  # the whole range is fine
        for bad in ([0, 1000], [-1, 5]):
            with pytest.raises(ValueError, match=r"timesteps .* out of range: this model was built for t in 0..999"):
                model(x, torch.tensor(bad))
        with pytest.raises(TypeError, match="t must be a"):
            model(x, 5)


def test_the_timestep_check_stays_out_of_exported_graphs():
    """torch.export traces through the check (it reads values, which a graph must not): no guard, no assert node."""
    model = zoo.build("residual", hidden=8).eval()
    ep = torch.export.export(model, (torch.randn(2, 3, 8, 8), torch.tensor([1, 2])))
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    value_checks = ("aten.lt", "aten.gt", "aten.any", "aten.bitwise_or", "aten.logical_or", "_assert_async", "_assert_scalar")
    assert not [op for op in ops if op.startswith(value_checks)], ops  # the check's comparisons are not in the graph
    out = ep.module()(torch.randn(2, 3, 8, 8), torch.tensor([5000, 7000]))  # not refused inside a graph
    assert out.shape == (2, 3, 8, 8)


# --- the demo's output and the CLI's help ------------------------------------------------------------

def test_a_second_demo_into_the_same_directory_is_refused_at_once(tmp_path):
    from runtime.apps.commands.demo import FAST, run_demo
    from zoo.files import OutputBusyError, output_lock

    with output_lock(tmp_path / "demo"):
        with pytest.raises(OutputBusyError, match="being written by another diffzoo process"):
            run_demo(tmp_path / "demo", FAST, provider="cpu", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_every_option_of_every_command_has_help(capsys):
    from runtime.apps.cli import COMMANDS, Parser

    build_parser()  # the parser refuses an option without help text as it is built
    with pytest.raises(TypeError, match="--quiet: every option needs help text"):
        Parser(prog="diffzoo x").add_argument("--quiet", action="store_true")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    listed = capsys.readouterr().out
    assert all(name.replace("_", "-") in listed for name in COMMANDS) and len(COMMANDS) == 11

