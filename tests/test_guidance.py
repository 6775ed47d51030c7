"""Class-conditional models and classifier-free guidance (issue 19, first part): the model, the math, eager sampling, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from zoo.diffusion import guide, guided_eps


def _cond(seed=0, k=3):
    torch.manual_seed(seed)
    return zoo.build("unet", hidden=8, channels=1, num_classes=k).eval()


def test_num_classes_zero_is_exactly_todays_unet():
    torch.manual_seed(0)
    plain = zoo.build("unet", hidden=8, channels=1)
    cond = _cond()
    assert plain.config.num_classes == 0 and plain.null_class is None and not hasattr(plain, "class_emb")
    sd_plain, sd_cond = plain.state_dict(), cond.state_dict()
    assert set(sd_cond) - set(sd_plain) == {"class_emb.weight"}  # the embedding is the only addition, made last
    for k, v in sd_plain.items():
        torch.testing.assert_close(sd_cond[k], v, rtol=0, atol=0)  # so every shared weight is drawn as before
    assert cond.null_class == 3 and cond.class_emb.weight.shape == (4, 32)


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

    def counting(xx, tt, ll):
        calls.append(len(xx))
        return model(xx, tt, ll)

    with torch.inference_mode():
        eps = guided_eps(counting, x, t, labels, 3, torch.tensor([0.0, 1.0, 3.0]))
        assert calls == [6]
        # w = 0: the null class (to float rounding: a 2B batch is another computation than a B batch)
        torch.testing.assert_close(eps[0], model(x, t, torch.full((3,), 3))[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(eps[1], model(x, t, labels)[1], rtol=0, atol=1e-6)  # w = 1: the class asked for

        def numpy_model(xx, tt, ll):
            return model(torch.from_numpy(xx), torch.from_numpy(tt), torch.from_numpy(ll)).numpy()

        np.testing.assert_allclose(guided_eps(numpy_model, x.numpy(), t.numpy(), labels.numpy(), 3,
                                              np.array([0.0, 1.0, 3.0], np.float32)), eps.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("solver,eta", [("ddim", 0.0), ("ddim", 0.5), ("dpmpp_2m", 0.0)])
def test_a_batch_mixing_labels_and_guidance_is_the_separate_runs(solver, eta):
    model, sched = _cond(), zoo.cosine_schedule(1000)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels, w = [2, 0, 1], [0.0, 1.5, 4.0]
    noise = torch.randn(6, 3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    kw = {"noise": noise} if eta else {}
    mixed = zoo.sample(model, sched, x, num_steps=6, solver=solver, eta=eta, labels=labels, guidance=w, **kw)
    for i in range(3):
        one_kw = {"noise": noise[:, i:i + 1]} if eta else {}
        alone = zoo.sample(model, sched, x[i:i + 1], num_steps=6, solver=solver, eta=eta, labels=labels[i], guidance=w[i],
                           **one_kw)
        torch.testing.assert_close(mixed[i:i + 1], alone, rtol=0, atol=1e-5)
    null = zoo.sample(model, sched, x, num_steps=6, solver=solver, eta=eta, **kw)  # no labels: the null class
    torch.testing.assert_close(null, zoo.sample(model, sched, x, num_steps=6, solver=solver, eta=eta, labels=[0, 0, 0],
                                                guidance=0.0, **kw), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"labels": [3]}, r"labels \[3, 3, 3\] are invalid: expected classes 0..2"),
    ({"labels": [0, 1, -1]}, r"labels \[0, 1, -1\] are invalid"),
    ({"labels": [0, 1]}, "labels must be one integer or 3 integers"),
    ({"labels": [0.5]}, "labels must be one integer"),
    ({"labels": 1, "guidance": float("nan")}, "guidance .* is invalid: expected one finite number >= 0"),
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
    assert model.config.num_classes == 10 and model.null_class == 10


def test_conditional_training_needs_labels_and_export_says_what_is_missing(tmp_path):
    import export
    from PIL import Image

    from zoo.training.train import TrainConfig, train

    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match="--conditional needs a labelled data source"):
        train(TrainConfig(model="unet", model_config={"hidden": 8}, data=f"folder:{folder}", size=8, steps=1, batch=2,
                          conditional=True), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="is class-conditional .* sample it eagerly"):
        export.export_bundle(_cond(), tmp_path / "b", example_shape=(1, 8, 8))


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
