"""The request is one object (``runtime.SampleRequest``), resolved once against a bundle into a ``Plan`` that the
sampler runs without checking it again."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import runtime
from runtime.apps.cli import main
from runtime.noise import image_noise
from runtime.requests import Conditioning, Plan, SampleRequest
from zoo.diffusion import DEFAULT_SPACING
from zoo.solvers import DEFAULT_SOLVER


def test_every_default_is_the_requests():
    r = SampleRequest()
    assert (r.solver, r.spacing, r.eta, r.mode, r.precision) == (DEFAULT_SOLVER, DEFAULT_SPACING, 0.0, "loop", "fp32")
    assert SampleRequest.of(num_steps=7) == dataclasses.replace(r, num_steps=7)
    assert SampleRequest.of(SampleRequest(seed=3), n=2) == SampleRequest(seed=3, n=2)


def test_an_unknown_setting_is_named_not_ignored(bundles):
    with pytest.raises(TypeError, match=r"unknown sampling setting\(s\) \['steps'\]: expected some of .*'num_steps'"):
        SampleRequest.of(steps=3)
    sampler = runtime.load(bundles["conv"].path, "cpu")
    with pytest.raises(TypeError, match=r"\['sover'\]"):
        sampler.sample(2, sover="ddim")


def test_a_plan_is_checked_once_and_read_only(bundles):
    sampler = runtime.load(bundles["conv"].path, "cpu")
    plan = sampler.plan(n=3, num_steps=4, spacing="trailing", solver="dpmpp_2m")
    assert isinstance(plan, Plan) and plan.request.num_steps == 4 and plan.solver.name == "dpmpp_2m"
    assert list(plan.timesteps) == [999, 749, 499, 249] and not plan.timesteps.flags.writeable
    assert plan.conditioning == plan.conditioning and plan.conditioning.feeds == {}  # unconditional: nothing fed
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.artifact = "denoiser"  # type: ignore[misc]
    with pytest.raises(ValueError, match="eta=0.5 is invalid with solver 'dpmpp_2m'"):
        sampler.plan(solver="dpmpp_2m", eta=0.5)


def test_a_plan_of_another_bundle_or_precision_is_refused(bundles):
    conv, residual = runtime.load(bundles["conv"].path, "cpu"), runtime.load(bundles["residual"].path, "cpu")
    foreign = residual.plan(n=2, num_steps=2)
    x_T, _ = image_noise(0, range(2), conv.shape, 2, stochastic=False)
    for call in (lambda: conv.sample(foreign), lambda: conv.run_batch(foreign, x_T)):
        with pytest.raises(ValueError, match="the plan was resolved against the bundle .* not this sampler's"):
            call()
    with pytest.raises(TypeError, match=r"a plan is resolved already: pass its settings \(\['seed'\]\) to Sampler.plan"):
        conv.sample(conv.plan(n=2), seed=1)
    with pytest.raises(ValueError, match="asks for precision 'int8', but this sampler runs 'fp32'"):
        conv.plan(precision="int8")


def test_a_custom_grid_runs_what_it_names(bundles):
    """``timesteps=`` replaces num_steps and spacing in every mode; the same grid as a spacing gives the same images."""
    sampler = runtime.load(bundles["conv"].path, "cpu")
    grid = [999, 666, 333, 0]
    for mode in ("loop", "fused", "step"):
        custom = sampler.sample(3, timesteps=grid, mode=mode, solver="dpmpp_2m")
        assert sampler.plan(timesteps=grid).request.num_steps == 4
        np.testing.assert_array_equal(custom, sampler.sample(3, num_steps=4, spacing="linspace", mode=mode,
                                                             solver="dpmpp_2m"))
        assert not np.array_equal(custom, sampler.sample(3, num_steps=4, mode=mode, solver="dpmpp_2m"))
    with pytest.raises(ValueError, match="timesteps"):
        sampler.plan(timesteps=[0, 999])


def test_a_part_of_a_plan_is_its_images(cond_bundle):
    """A shard of a plan (``Plan.part``) samples exactly those images of the whole, each with its own label."""
    sampler = runtime.load(cond_bundle.path, "cpu")
    plan = sampler.plan(n=6, num_steps=3, labels=[0, 1, 2, 3, 4, 5], guidance=2.0, batch_size=4)
    whole = sampler.sample(plan)
    part = plan.part(2, 5)
    assert part.request.start == 2 and part.conditioning.labels.tolist() == [2, 3, 4]
    np.testing.assert_array_equal(sampler.sample(part), whole[2:5])
    for lo, hi in ((3, 3), (-1, 2), (4, 7)):
        with pytest.raises(ValueError, match=f"images {lo}..{hi - 1} are not a part of the plan's 6 images"):
            plan.part(lo, hi)
    with pytest.raises(ValueError, match="the conditioning is for 6 images, the batch has 2"):
        sampler.run_batch(plan, image_noise(0, range(2), sampler.shape, 3, stochastic=False)[0])


def test_conditioning_is_checked_once_and_joined_by_rows(cond_bundle):
    manifest = runtime.load(cond_bundle.path, "cpu").manifest
    a = Conditioning.of(manifest, 2, "one", 3.0)
    b = Conditioning.of(manifest, 1)
    assert a.labels.tolist() == [1, 1] and a.guidance.tolist() == [3.0, 3.0]
    assert b.labels is None and b.feeds["labels"].tolist() == [10]  # the null class fills the graph's input
    joined = Conditioning.join([a, b])
    assert joined.n == 3 and joined.feeds["labels"].tolist() == [1, 1, 10] and joined.labels is None
    assert a.rows([1]).feeds["guidance"].tolist() == [3.0]


def test_cli_sample_resolves_the_request_once(cond_bundle, tmp_path, monkeypatch):
    """One ``diffzoo sample`` of several batches and a class resolves its request and conditioning once."""
    calls = {"resolve": 0, "conditioning": 0}
    resolve, of = SampleRequest.resolve, Conditioning.of.__func__

    def counted_resolve(self, *a, **k):
        calls["resolve"] += 1
        return resolve(self, *a, **k)

    def counted_of(cls, *a, **k):
        calls["conditioning"] += 1
        return of(cls, *a, **k)

    monkeypatch.setattr(SampleRequest, "resolve", counted_resolve)
    monkeypatch.setattr(Conditioning, "of", classmethod(counted_of))
    out = tmp_path / "x.npy"
    assert main(["sample", str(cond_bundle.path), "--provider", "cpu", "--n", "8", "--batch-size", "2", "--steps", "2",
                 "--class", "one", "--out", str(out)]) == 0
    assert np.load(out).shape == (8, 1, 8, 8)
    assert calls == {"resolve": 1, "conditioning": 1}
