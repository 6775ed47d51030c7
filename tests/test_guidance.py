"""Class-conditional models and classifier-free guidance (issue 19, first part): the model, the math, eager sampling, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from conftest import COND_NAMES, SOLVER_RUNS
from zoo.conditioning import class_labels, guided_eps
from zoo.diffusion import guide


def _cond(seed=0, k=3):
    torch.manual_seed(seed)
    return zoo.build("unet", hidden=8, channels=1, num_classes=k).eval()


def test_num_classes_zero_is_exactly_todays_unet():
    torch.manual_seed(0)
    plain = zoo.build("unet", hidden=8, channels=1)
    cond = _cond()
    assert plain.config.num_classes == 0 and plain.conditioning is None and not hasattr(plain, "class_emb")
    sd_plain, sd_cond = plain.state_dict(), cond.state_dict()
    assert set(sd_cond) - set(sd_plain) == {"class_emb.weight"}  # the embedding is the only addition, made last
    for k, v in sd_plain.items():
        torch.testing.assert_close(sd_cond[k], v, rtol=0, atol=0)  # so every shared weight is drawn as before
    assert cond.conditioning == class_labels(3) and cond.class_emb.weight.shape == (4, 32)


@pytest.mark.parametrize("name", ["conv", "residual"])
def test_the_seed_models_stay_unconditional(name):
    with pytest.raises(ValueError, match=rf"the '{name}' model is unconditional, as the seed specifies it.*'unet'"):
        zoo.build(name, hidden=8, num_classes=10)


def test_guidance_math_in_torch_and_numpy():
    rng = np.random.default_rng(0)
    c, u = rng.standard_normal((2, 3, 1, 2, 2)).astype(np.float32)
    w = np.array([0.0, 1.0, 2.5], np.float32)
    got = guide(c, u, w)
    np.testing.assert_array_equal(got[0], u[0])  # w = 0: the unconditional prediction
    np.testing.assert_allclose(got[1], c[1], rtol=0, atol=1e-6)  # w = 1: the conditional one
    np.testing.assert_allclose(got[2], u[2] + 2.5 * (c[2] - u[2]), rtol=1e-6)
    np.testing.assert_array_equal(guide(torch.from_numpy(c), torch.from_numpy(u), torch.from_numpy(w)).numpy(), got)


def test_guided_eps_is_one_call_on_a_2b_batch_for_torch_and_numpy():
    model = _cond()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t, labels = torch.tensor([10, 500, 999]), torch.tensor([0, 1, 2])
    calls = []

    def counting(xx, tt, labels):
        calls.append(len(xx))
        return model(xx, tt, labels)

    with torch.inference_mode():
        eps = guided_eps(counting, x, t, model.conditioning, {"labels": labels, "guidance": torch.tensor([0.0, 1.0, 3.0])})
        assert calls == [6]
        # w = 0: the null class (to float rounding: a 2B batch is another computation than a B batch)
        torch.testing.assert_close(eps[0], model(x, t, torch.full((3,), 3))[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(eps[1], model(x, t, labels)[1], rtol=0, atol=1e-6)  # w = 1: the class asked for

        def numpy_model(xx, tt, labels):
            return model(torch.from_numpy(xx), torch.from_numpy(tt), torch.from_numpy(labels)).numpy()

        feed = {"labels": labels.numpy(), "guidance": np.array([0.0, 1.0, 3.0], np.float32)}
        np.testing.assert_allclose(guided_eps(numpy_model, x.numpy(), t.numpy(), model.conditioning, feed), eps.numpy(),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("solver,eta", SOLVER_RUNS)
def test_a_batch_mixing_labels_and_guidance_is_the_separate_runs(solver, eta):
    model, sched = _cond(), zoo.cosine_schedule(1000)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels, w = [2, 0, 1], [0.0, 1.5, 4.0]
    noise = torch.randn(6, 3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    stochastic = zoo.solvers.get_solver(solver).stochastic(eta)
    kw = {"noise": noise} if stochastic else {}
    mixed = zoo.sample(model, sched, x, num_steps=6, solver=solver, eta=eta, labels=labels, guidance=w, **kw)
    for i in range(3):
        one_kw = {"noise": noise[:, i:i + 1]} if stochastic else {}
        alone = zoo.sample(model, sched, x[i:i + 1], num_steps=6, solver=solver, eta=eta, labels=labels[i], guidance=w[i],
                           **one_kw)
        torch.testing.assert_close(mixed[i:i + 1], alone, rtol=0, atol=1e-5)
    null = zoo.sample(model, sched, x, num_steps=6, solver=solver, eta=eta, **kw)  # no labels: the null class
    torch.testing.assert_close(null, zoo.sample(model, sched, x, num_steps=6, solver=solver, eta=eta, labels=[0, 0, 0],
                                                guidance=0.0, **kw), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"labels": [3]}, r"label 3 is invalid: expected a class index 0..2$"),  # 3 is the null class: not asked for
    ({"labels": torch.tensor([0, 1, -1])}, r"label -1 is invalid"),
    ({"labels": [0, 1]}, r"labels must be one class or 3 \(one per image\)"),
    ({"labels": [0.5]}, "label 0.5 is invalid"),
    ({"labels": [True]}, "label True is invalid"),
    ({"labels": 1, "guidance": float("nan")}, r"guidance nan is invalid: expected 0..100 \(0: unconditional"),
    ({"labels": 1, "guidance": 3e38}, r"guidance 3e\+38 is invalid: expected 0..100"),  # finite but absurd
    ({"labels": [0, 1, 2], "guidance": [1, 2, 101]}, r"guidance 101.0 \(image 2\) is invalid: expected 0..100"),
    ({"labels": 1, "guidance": float("inf")}, "guidance .* is invalid"),
    ({"labels": 1, "guidance": -1.0}, "guidance .* is invalid"),
    ({"guidance": 2.0}, "guidance needs labels"),
])
def test_bad_labels_and_guidance_are_refused(kwargs, match):
    x = torch.randn(3, 1, 8, 8)
    with pytest.raises(ValueError, match=match):
        zoo.sample(_cond(), zoo.linear_schedule(1000), x, num_steps=2, **kwargs)


def test_labels_for_an_unconditional_model_are_refused():
    torch.manual_seed(0)
    model = zoo.build("unet", hidden=8, channels=1).eval()
    with pytest.raises(ValueError, match="need a class-conditional model"):
        zoo.sample(model, zoo.linear_schedule(1000), torch.randn(1, 1, 8, 8), num_steps=2, labels=1)
    with pytest.raises(ValueError, match="labels were given to an unconditional model"):
        model(torch.randn(1, 1, 8, 8), torch.tensor([5]), torch.tensor([1]))


def test_conditional_training_keeps_classes_and_resumes_exactly(tmp_path):
    from zoo.training.train import TrainConfig, train
    from zoo.weights import load_weights, read_weights_metadata

    cfg = TrainConfig(model="unet", model_config={"hidden": 8}, data="digits", size=8, steps=4, batch=8, checkpoint_every=2,
                      conditional=True, cond_drop=0.5)
    whole = train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "split", progress=False, until=2)
    split = train(cfg, tmp_path / "split", resume=True, progress=False)
    assert whole.weights_sha256 == split.weights_sha256  # label dropout drawn from the (seed, step) generator
    meta = read_weights_metadata(whole.checkpoint)
    assert meta["data"]["classes"] == {"names": [str(d) for d in range(10)], "null": 10}
    model, _, _ = load_weights(whole.checkpoint)
    assert model.config.num_classes == 10 and model.conditioning == class_labels(10)


def test_conditional_training_needs_labels(tmp_path):
    from PIL import Image

    from zoo.training.train import TrainConfig, train

    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match="--conditional needs a labelled data source"):
        train(TrainConfig(model="unet", model_config={"hidden": 8}, data=f"folder:{folder}", size=8, steps=1, batch=2,
                          conditional=True), tmp_path / "run", progress=False)


def test_image_folders_with_one_subfolder_per_class_are_labelled(tmp_path):
    from PIL import Image

    from zoo.training.data import ImageFolder

    for name, shade in (("dogs", 50), ("cats", 200)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (shade,) * 3).save(tmp_path / name / f"{i}.png")
    ds = ImageFolder(tmp_path, 8)
    assert ds.classes == ("cats", "dogs") and ds.labels.tolist() == [0, 0, 1, 1]  # sorted names, as torchvision
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    assert ImageFolder(tmp_path, 8).num_classes == 0  # an image directly under the root: unconditional


# --- bundles: labels and guidance through every artifact and mode -------------------------------------------

def test_a_conditional_bundle_records_its_classes_and_inputs(cond_bundle):
    m = cond_bundle.manifest
    assert m["classes"] == {"count": 10, "null": 10, "names": list(COND_NAMES)}
    names = {a: [i["name"] for i in e["inputs"]] for a, e in m["artifacts"].items()}
    assert names["denoiser"] == ["x", "t", "labels"]
    assert names["fused_step"] == ["x_t", "t", "t_prev", "labels", "guidance"]
    assert names["fused_step_eta"] == ["x_t", "t", "t_prev", "labels", "guidance", "noise", "eta"]
    assert names["fused_step_dpmpp"] == ["x_t", "x0_last", "t", "t_prev", "t_last", "labels", "guidance"]
    assert names["sampler_eta"] == ["x_T", "timesteps", "labels", "guidance", "noise", "eta"]
    assert names["ddim_step"] == ["x_t", "eps", "alpha_bar_t", "alpha_bar_prev"]  # no network: unchanged
    assert all(c["max_abs_diff"] <= c["atol"] for c in cond_bundle.checks)  # verified with mixed labels and guidance


@pytest.mark.parametrize("solver,eta", SOLVER_RUNS)
def test_every_mode_samples_the_guided_images_of_eager_torch(cond_bundle, solver, eta):
    import runtime
    from export.bundle import load_model
    from export.verify import derived_atol
    from runtime.noise import image_noise

    s = runtime.load(cond_bundle.path, provider="cpu")
    labels, w = [COND_NAMES[2], 0, 1, "one"], [0.0, 1.5, 4.0, 1.0]  # names and indices; guidance per image
    x_T, noise = image_noise(3, range(4), s.shape, 6, stochastic=zoo.solvers.get_solver(solver).stochastic(eta))
    model, sched, _ = load_model(cond_bundle.path)

    def eager(dtype):
        m = model.to(dtype)
        kw = {} if noise is None else {"noise": torch.from_numpy(noise).to(dtype)}
        return zoo.sample(m, sched, torch.from_numpy(x_T).to(dtype), num_steps=6, solver=solver, eta=eta,
                          labels=[2, 0, 1, 1], guidance=w, **kw).double().numpy()

    ref32 = eager(torch.float32)
    bound, _ = derived_atol({"x": ref32}, {"x": eager(torch.float64)})
    for mode in ("loop", "fused", "step"):
        got = s.sample(4, num_steps=6, seed=3, eta=eta, mode=mode, solver=solver, labels=labels, guidance=w)
        assert np.abs(got - ref32).max() <= bound, (mode, np.abs(got - ref32).max(), bound)
    mixed = s.sample(4, num_steps=6, seed=3, eta=eta, solver=solver, labels=labels, guidance=w)
    for k in range(4):  # image k depends only on (seed, k, its label, its guidance): a mixed batch is the separate runs
        one = s.sample(1, num_steps=6, seed=3, start=k, eta=eta, solver=solver, labels=labels[k], guidance=w[k])
        # within float32's own error (the derived bound): onnxruntime may sum in another order at batch 1 than at 4
        np.testing.assert_allclose(one, mixed[k:k + 1], rtol=0, atol=bound)


@pytest.mark.parametrize("kwargs,match", [
    ({"labels": [10]}, r"label 10 is invalid: expected a class index 0..9 or one of the names \['zéro', 'one', '\"two\"', '3'"),
    ({"labels": ["cat"]}, "label 'cat' is invalid"),
    ({"labels": [0, 1]}, "labels must be one class or 4"),
    ({"labels": 1, "guidance": float("nan")}, "guidance .* is invalid"),
    ({"labels": 1, "guidance": -2.0}, "guidance .* is invalid"),
    ({"guidance": 2.0}, "guidance needs labels"),
])
def test_bad_labels_and_guidance_are_refused_by_the_runtime(cond_bundle, kwargs, match):
    import runtime

    with pytest.raises(ValueError, match=match):
        runtime.load(cond_bundle.path, provider="cpu").sample(4, num_steps=2, **kwargs)


def test_labels_for_an_unconditional_bundle_are_refused(bundles):
    import runtime

    with pytest.raises(ValueError, match="labels and guidance need a class-conditional bundle"):
        runtime.load(bundles["unet"].path, provider="cpu").sample(2, num_steps=2, labels=1)


def test_cli_sample_takes_classes_by_name_or_index_and_guidance(cond_bundle, tmp_path, capsys):
    from runtime.apps.cli import main

    out = tmp_path / "x.npy"
    args = ["sample", str(cond_bundle.path), "--provider", "cpu", "--n", "4", "--steps", "3", "--out", str(out)]
    assert main([*args, "--class", f"{COND_NAMES[2]},0,1,one", "--guidance", "0,1.5,4,1"]) == 0
    import runtime

    expected = runtime.load(cond_bundle.path, provider="cpu").sample(4, num_steps=3, labels=[2, 0, 1, 1],
                                                                       guidance=[0, 1.5, 4, 1])
    np.testing.assert_array_equal(np.load(out), expected)
    # without --class: the null class (unconditional), as eager torch samples a conditional model without labels
    assert main(args) == 0
    from export.bundle import load_model

    model, sched, _ = load_model(cond_bundle.path)
    s = runtime.load(cond_bundle.path, provider="cpu")
    from runtime.noise import image_noise

    x_T, _ = image_noise(0, range(4), s.shape, 3, stochastic=False)
    eager = zoo.sample(model, sched, torch.from_numpy(x_T), num_steps=3).numpy()
    assert np.abs(np.load(out) - eager).max() < 1e-4
    assert np.abs(np.load(out) - expected).max() > 1e-3  # not the guided images
    for bad, match in ((["--class", "10"], "label 10 is invalid"), (["--class", "1", "--guidance", "x"], "--guidance 'x' is invalid"),
                       (["--guidance", "2"], "guidance needs labels")):
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert match in err[-1] and len([line for line in err if "error" in line]) == 1


def test_export_of_a_conditional_run_keeps_its_class_names(tmp_path):
    import json

    from runtime.apps.cli import main

    run, bundle = tmp_path / "run", tmp_path / "b"
    assert main(["train", "--model", "unet", "--hidden", "8", "--data", "digits", "--size", "8", "--steps", "2", "--batch", "8",
                 "--conditional", "--out", str(run)]) == 0
    # without --class-names an export records the run's own (the data's), which export reads with zoo.weights.class_names
    from zoo.weights import class_names, load_weights

    assert class_names(load_weights(run / "last" / "ema.safetensors")[2]) == tuple(str(d) for d in range(10))
    names = "zero,one,two,three,four,five,six,seven,eight,nine"
    assert main(["export", "--checkpoint", str(run), "--formats", "onnx", "--solvers", "dpmpp_2m", "--out", str(bundle),
                 "--class-names", names]) == 0
    classes = json.loads((bundle / "manifest.json").read_text())["classes"]
    assert classes == {"count": 10, "null": 10, "names": names.split(",")}
    for bad in ("a,b", "a,a,b,c,d,e,f,g,h,i", "a,,b,c,d,e,f,g,h,i"):  # the count, duplicates, an empty name
        assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "bad"), "--class-names", bad]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("classes", [{"count": 4, "null": 4, "names": ["a", "b", "c", "d"]},
                                     {"count": 10, "null": 10, "names": list(range(10))}, ["a", "b", "c"]])
def test_an_edited_classes_table_is_refused(cond_bundle, tmp_path, classes):
    import json
    import shutil

    import runtime
    from export.format.manifest import BundleError

    path = tmp_path / "b"
    shutil.copytree(cond_bundle.path, path)
    m = json.loads((path / "manifest.json").read_text())
    m["classes"] = classes
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="classes = .* is invalid"):
        runtime.load(path, provider="cpu")


def test_cli_class_all_writes_a_row_per_class_with_its_name(cond_bundle, tmp_path, capsys):
    from PIL import Image

    from runtime.apps.cli import main
    from zoo.images import grid_array

    out = tmp_path / "all.png"
    args = ["sample", str(cond_bundle.path), "--provider", "cpu", "--n", "2", "--steps", "3", "--class", "all"]
    assert main([*args, "--guidance", "2", "--out", str(out)]) == 0
    assert "20 images" in capsys.readouterr().out  # --n 2 of each of the 10 classes
    grid = grid_array(np.zeros((20, 1, 8, 8), np.float32), nrow=2, scale=8, pad_value=96)
    w, h = Image.open(out).size
    assert h == grid.shape[0] and w > grid.shape[1]  # ten rows; a margin at the left holds the names
    margin = np.asarray(Image.open(out).convert("L"))[:, : w - grid.shape[1]]
    assert (margin < 128).any()  # the names are drawn there
    assert main([*args, "--out", str(tmp_path / "all.npy")]) == 2
    assert "--class all writes one .png grid" in capsys.readouterr().err


def test_parity_of_guided_sampling_in_every_mode(cond_bundle, capsys):
    """parity takes labels and guidance; both sides sample them (a side that ignored them would differ)."""
    import runtime
    from runtime.apps.cli import main

    rep = runtime.parity(cond_bundle.path, provider="cpu", num_steps=4, batch=3, labels=[COND_NAMES[2], 0, 1], guidance=[0.0, 2.0, 1.0])
    assert rep.passed and [m.mode for m in rep.modes] == ["loop", "fused", "step"]
    assert rep.labels == [2, 0, 1] and rep.guidance == [0.0, 2.0, 1.0]
    args = ["parity", str(cond_bundle.path), "--provider", "cpu", "--steps", "3", "--batch", "11", "--modes", "loop"]
    assert main([*args, "--class", "all", "--guidance", "2"]) == 0
    assert "labels [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0], guidance [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]" \
        in capsys.readouterr().out
    assert main([*args, "--class", "zebra"]) == 2
    assert "label 'zebra' is invalid" in capsys.readouterr().err


def test_parity_of_every_class_covers_every_class(cond_bundle, capsys):
    from runtime.apps.cli import main

    args = ["parity", str(cond_bundle.path), "--provider", "cpu", "--steps", "2", "--modes", "loop", "--class", "all"]
    assert main(args) == 0  # no --batch: one image per class
    assert f"labels {list(range(10))}, guidance {[1.0] * 10}" in capsys.readouterr().out
    assert main([*args, "--batch", "2"]) == 2
    assert "--class all compares every class: --batch 2 is invalid, expected at least the bundle's 10 classes" in capsys.readouterr().err


@pytest.mark.parametrize("names,match", [
    (("zero", "all", "two"), r"class name 'all' \(class 1\) is invalid: 'all' asks for every class"),
    (("2", "1", "0"), r"class name '2' \(class 0\) is invalid: a number names the class of that index"),
])
def test_class_names_that_would_mean_two_things_are_refused(tmp_path, names, match):
    import export

    with pytest.raises(ValueError, match=match):
        export.export_bundle(_cond(), tmp_path / "b", example_shape=(1, 8, 8), formats=("onnx",), class_names=names)
    assert not (tmp_path / "b").exists()
    # a number naming its own index is what IDX files' names are: accepted (the next check, of the formats, refuses)
    with pytest.raises(ValueError, match="unknown format"):
        export.export_bundle(_cond(), tmp_path / "ok", example_shape=(1, 8, 8), formats=("tflite",), class_names=("0", "1", "two"))


class _PointMasses(torch.nn.Module):
    """The exact denoiser of data that is one of three points (a class each): eps from the posterior mean of x0.

    Conditional: x0 is the class's point; the null class: the posterior over the three points given x_t.
    """

    conditioning = class_labels(3)

    def __init__(self, schedule):
        super().__init__()
        d = 16
        self.centers = torch.stack([torch.full((d,), -0.8), torch.full((d,), 0.8), torch.tensor([0.8, -0.8] * (d // 2))])
        self.register_buffer("alphas", torch.from_numpy(schedule.alphas_cumprod))

    def forward(self, x, t, labels):  # x (B, 16, 1, 1)
        a = self.alphas[t].to(x.dtype)[:, None]
        flat = x.flatten(1)
        c = self.centers.to(x.dtype)
        dist = ((flat[:, None] - a.sqrt()[:, None] * c) ** 2).sum(-1) / (2 * (1 - a))  # (B, 3)
        x0 = torch.where((labels == 3)[:, None], torch.softmax(-dist, 1) @ c, c[labels.clamp(max=2)])
        return ((flat - a.sqrt() * x0) / (1 - a).sqrt()).reshape(x.shape)


@pytest.mark.parametrize("guidance", [2.0, 3.0, 5.0])
def test_guided_ddim_reaches_the_asked_class_with_the_clipped_eps_rule(guidance):
    """Deterministic DDIM under guidance with the exact denoiser: the default eps rule lands every sample on the point
    of its class; the network's own eps (the rule before issue 28, diffusers' default) leaves noise in them."""
    schedule = zoo.cosine_schedule(1000)
    model = _PointMasses(schedule)
    x_T = torch.randn((30, 16, 1, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.arange(30) % 3
    asked = model.centers.double()[labels][:, :, None, None]
    clipped = zoo.sample(model, schedule, x_T, 50, labels=labels, guidance=guidance)
    plain = zoo.sample(model, schedule, x_T, 50, labels=labels, guidance=guidance, eps_rule="model")
    assert float((clipped - asked).abs().max()) < 1e-3
    assert float((plain - asked).pow(2).mean().sqrt()) > 0.1  # noise left in the samples
