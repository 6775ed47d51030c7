import json
import math

import numpy as np
import pytest
import torch

import zoo
from zoo.diffusion import EPS_RULES, ddim_step, ddim_timesteps, dpmpp_2m_step, make_training_sample, unipc_step
from zoo.samplers import ddim_sample

# --- schedules ------------------------------------------------------------------------------

def test_linear_schedule_golden():
    s = zoo.linear_schedule()
    assert s.betas.dtype == np.float64 and s.alphas_cumprod.shape == (1000,)
    ab = s.alphas_cumprod
    assert ab[0] == pytest.approx(0.9999, abs=1e-15)
    assert ab[1] == pytest.approx(0.9999 * (1 - (1e-4 + (0.02 - 1e-4) / 999)), rel=1e-14)
    assert ab[499] == pytest.approx(0.07858724288177824, rel=1e-12)
    assert ab[999] == pytest.approx(4.035829765375676e-05, rel=1e-12)  # DDPM's well-known ~4.04e-5


def test_cosine_schedule_golden():
    s = zoo.cosine_schedule()
    ab = s.alphas_cumprod
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 499, 900):  # no beta clipping yet: ab_t = f(t+1) / f(0)
        assert ab[t] == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert ab[0] == pytest.approx(0.999958715775178, rel=1e-12)
    assert ab[499] == pytest.approx(0.4938435904406382, rel=1e-12)
    assert s.betas[-1] == 0.999  # max_beta clips the last beta
    assert ab[999] == pytest.approx(2.4287669070348567e-09, rel=1e-9)


@pytest.mark.parametrize("sched", [zoo.linear_schedule(50, 1e-3, 0.05), zoo.cosine_schedule(20, s=0.01)])
def test_schedule_json_roundtrip(sched):
    d = json.loads(json.dumps(sched.to_dict()))
    again = zoo.Schedule.from_dict(d)
    assert again.name == sched.name and again.params == sched.params
    np.testing.assert_array_equal(again.alphas_cumprod, sched.alphas_cumprod)


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"unknown schedule 'sigmoid'.*\['cosine', 'linear', 'scaled_linear', 'trained'\]"):
        zoo.make_schedule("sigmoid")
    with pytest.raises(TypeError, match=r"'beta'.*accepted"):
        zoo.make_schedule("linear", beta=1)
    with pytest.raises(ValueError, match="num_train_timesteps=0"):
        zoo.linear_schedule(0)
    with pytest.raises(ValueError, match="beta_start"):
        zoo.linear_schedule(10, beta_start=0.5, beta_end=0.1)
    with pytest.raises(ValueError, match="max_beta"):
        zoo.cosine_schedule(10, max_beta=1.0)
    with pytest.raises(ValueError, match=r"betas=\[0.1, 1.5\] are invalid: expected a list of 1..100,000 numbers"):
        zoo.make_schedule("trained", betas=[0.1, 1.5])
    with pytest.raises(ValueError, match="num_train_timesteps=3 does not match the 2 betas given"):
        zoo.make_schedule("trained", betas=[0.1, 0.2], num_train_timesteps=3)


def test_scaled_linear_and_trained_schedules():
    s = zoo.make_schedule("scaled_linear", num_train_timesteps=4, beta_start=0.01, beta_end=0.09)
    np.testing.assert_allclose(s.betas, [0.01, (0.1 + 0.2 / 3) ** 2, (0.1 + 0.4 / 3) ** 2, 0.09], rtol=1e-12)
    t = zoo.make_schedule(**zoo.make_schedule("trained", betas=[0.1, 0.2, 0.3]).to_dict())  # rebuilt from the manifest
    assert t.num_train_timesteps == 3 and np.allclose(t.alphas_cumprod, [0.9, 0.72, 0.504])


def test_schedule_is_immutable():
    s = zoo.linear_schedule()
    with pytest.raises(ValueError):
        s.alphas_cumprod[0] = 0.5


# --- timesteps ------------------------------------------------------------------------------

def test_ddim_timesteps_golden():
    assert ddim_timesteps(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert ddim_timesteps(1000, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ddim_timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert ddim_timesteps(10, 3, "leading").tolist() == [6, 3, 0]
    assert ddim_timesteps(10, 3, "trailing").tolist() == [9, 6, 2]
    assert ddim_timesteps(10, 3, "linspace").tolist() == [9, 4, 0]
    assert ddim_timesteps(1000, 1000, "leading").tolist() == list(range(999, -1, -1))
    for sp in ("leading", "trailing", "linspace"):
        ts = ddim_timesteps(1000, 50, sp)
        assert ts.dtype == np.int64 and len(ts) == 50 and np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("T", [1, 10, 37, 1000])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_timesteps_every_step_count(T, spacing):
    # Exactly S distinct, descending timesteps inside 0..T-1 for every S in 1..T. diffusers' float
    # arange gives 62 of the S at T = 1000 (61, 103, ...) S + 1 values ending in -1 for "trailing".
    for S in range(1, T + 1):
        ts = ddim_timesteps(T, S, spacing)
        assert ts.dtype == np.int64 and ts.shape == (S,), (S, ts)
        assert ts[0] <= T - 1 and ts[-1] >= 0 and np.all(np.diff(ts) < 0), (S, ts)


def test_ddim_timesteps_trailing_61_and_ties():
    ts = ddim_timesteps(1000, 61, "trailing")
    assert len(ts) == 61 and ts[-1] == 15 and ts[0] == 999
    # An exact tie (1000 * 45 / 48 = 937.5) rounds half to even, not wherever float error falls.
    assert ddim_timesteps(1000, 48, "trailing")[3] == 937


@pytest.mark.parametrize("steps", [0, 1001, -3, 2.5])
def test_ddim_timesteps_bad_steps(steps):
    with pytest.raises(ValueError, match=r"num_steps=.*1\.\.1000"):
        ddim_timesteps(1000, steps)


def test_ddim_timesteps_bad_spacing():
    with pytest.raises(ValueError, match=r"'uniform'.*\['leading', 'linspace', 'trailing'\]"):
        ddim_timesteps(1000, 10, "uniform")


# --- training sample ------------------------------------------------------------------------

def test_make_training_sample_algebra():
    x0 = torch.full((2, 1, 2, 2), 0.5)
    eps = torch.full((2, 1, 2, 2), -1.0)
    x_t, target = make_training_sample(x0, eps, torch.tensor([0.36, 0.64], dtype=torch.float64))
    assert target is eps
    torch.testing.assert_close(x_t[0], torch.full((1, 2, 2), 0.6 * 0.5 - 0.8))
    torch.testing.assert_close(x_t[1], torch.full((1, 2, 2), 0.8 * 0.5 - 0.6))
    assert x_t.dtype == torch.float32
    xn, _ = make_training_sample(x0.numpy(), eps.numpy(), 0.36)
    np.testing.assert_allclose(xn, 0.6 * 0.5 - 0.8, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        make_training_sample(x0, eps[:1], 0.5)


# --- ddim_step ------------------------------------------------------------------------------

def test_ddim_step_hand_computed():
    x_t, eps = torch.tensor([[[[0.2]]]]), torch.tensor([[[[0.1]]]])
    out = ddim_step(x_t, eps, 0.25, 0.64)
    # x0 = (0.2 - sqrt(0.75)*0.1)/0.5 = 0.22679...; x_prev = 0.8*x0 + sqrt(0.36)*0.1
    assert out.item() == pytest.approx(0.24143593539448985, abs=1e-7)


def test_ddim_step_eta_with_noise():
    x_t, eps, z = torch.tensor([[[[0.2]]]]), torch.tensor([[[[0.1]]]]), torch.tensor([[[[-0.5]]]])
    out = ddim_step(x_t, eps, 0.25, 0.64, eta=1.0, noise=z)
    # sigma = sqrt(0.36/0.75 * (1 - 0.25/0.64)) = 0.54083...
    assert out.item() == pytest.approx(-0.06299964815177614, abs=1e-7)
    with pytest.raises(ValueError, match="needs `noise`"):
        ddim_step(x_t, eps, 0.25, 0.64, eta=0.5)
    with pytest.raises(ValueError, match="eta=-0.1"):
        ddim_step(x_t, eps, 0.25, 0.64, eta=-0.1)


def test_ddim_step_clamp_engages():
    x_t, eps = torch.tensor([[[[1.0]]]]), torch.tensor([[[[0.5]]]])
    # unclipped x0 = (1 - sqrt(0.75)*0.5)/0.5 = 1.134 > 1, clipped to 1
    assert ddim_step(x_t, eps, 0.25, 0.64, eps_rule="model").item() == pytest.approx(0.8 * 1.0 + 0.6 * 0.5, abs=1e-7)
    # the default rule re-derives eps from the clipped x0: (1 - sqrt(0.25) * 1) / sqrt(0.75) = 0.57735
    assert ddim_step(x_t, eps, 0.25, 0.64).item() == pytest.approx(0.8 * 1.0 + 0.6 * 0.5 / 0.75**0.5, abs=1e-7)
    for rule in EPS_RULES:  # without a clip, or where the clip does not engage, both rules are the same step
        assert ddim_step(x_t, eps, 0.25, 0.64, clip_range=None, eps_rule=rule).item() == pytest.approx(
            0.8 * 1.1339745962155614 + 0.3, abs=1e-6)
        assert ddim_step(x_t, eps, 0.25, 0.64, clip_range=2.0, eps_rule=rule).item() == pytest.approx(
            0.8 * 1.1339745962155614 + 0.3, abs=1e-6)
    with pytest.raises(ValueError, match=r"unknown eps_rule 'clip': expected one of \['clipped', 'model'\]"):
        ddim_step(x_t, eps, 0.25, 0.64, eps_rule="clip")


def test_ddim_step_last_step_returns_x0():
    torch.manual_seed(0)
    x_t, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a_t = 0.9
    x0 = ((x_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5).clamp(-1, 1)
    torch.testing.assert_close(ddim_step(x_t, eps, a_t, 1.0), x0)
    torch.testing.assert_close(ddim_step(x_t, eps, a_t, 1.0, eta=1.0, noise=torch.randn(2, 3, 4, 4)), x0)


def test_ddim_step_per_sample_alphas():
    torch.manual_seed(0)
    x_t, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    both = ddim_step(x_t, eps, torch.tensor([0.3, 0.5]), torch.tensor([0.6, 0.7]))
    torch.testing.assert_close(both[:1], ddim_step(x_t[:1], eps[:1], 0.3, 0.6))
    torch.testing.assert_close(both[1:], ddim_step(x_t[1:], eps[1:], 0.5, 0.7))


def test_ddim_step_numpy_and_torch_agree():
    rng = np.random.default_rng(0)
    x_t, eps, z = (rng.standard_normal((3, 3, 5, 5)).astype(np.float32) for _ in range(3))
    a_t, a_prev = np.array([0.1, 0.5, 0.9]), np.array([0.3, 0.7, 1.0])
    for eta, noise in [(0.0, None), (0.7, z)]:
        out_np = ddim_step(x_t, eps, a_t, a_prev, eta=eta, noise=noise)
        out_t = ddim_step(
            torch.from_numpy(x_t), torch.from_numpy(eps), torch.from_numpy(a_t), torch.from_numpy(a_prev),
            eta=eta, noise=None if noise is None else torch.from_numpy(noise),
        )
        assert out_np.dtype == np.float32 and isinstance(out_np, np.ndarray)
        np.testing.assert_allclose(out_np, out_t.numpy(), rtol=0, atol=1e-6)


# --- ddim_sample ----------------------------------------------------------------------------

def test_ddim_sample_deterministic_and_in_range(small_model):
    sched = zoo.linear_schedule()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = ddim_sample(small_model, sched, x_T, num_steps=5)
    b = ddim_sample(small_model, sched, x_T.clone(), num_steps=5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == x_T.shape and a.abs().max() <= 1.0


def test_ddim_sample_eta_noise_tensor_vs_generator(small_model):
    sched = zoo.cosine_schedule()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(4, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = ddim_sample(small_model, sched, x_T, num_steps=4, eta=1.0, noise=noise)
    b = ddim_sample(small_model, sched, x_T, num_steps=4, eta=1.0, noise=noise)
    c = ddim_sample(small_model, sched, x_T, num_steps=4, eta=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3  # the noise is really used
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(
        ddim_sample(small_model, sched, x_T, num_steps=4, eta=0.5, noise=g1),
        ddim_sample(small_model, sched, x_T, num_steps=4, eta=0.5, noise=g2),
    )


def test_ddim_sample_matches_manual_loop(small_model):
    sched = zoo.linear_schedule()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ts = ddim_timesteps(1000, 3, "trailing")
    ab = torch.from_numpy(sched.alphas_cumprod.copy()).float()
    ref = x
    with torch.no_grad():
        for i, t in enumerate(ts):
            eps = small_model(ref, torch.tensor([int(t)]))
            ref = ddim_step(ref, eps, ab[t], ab[ts[i + 1]] if i + 1 < len(ts) else 1.0)
    out = ddim_sample(small_model, sched, x, num_steps=3, spacing="trailing")
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_ddim_sample_errors(small_model):
    x_T = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="needs `noise`"):
        ddim_sample(small_model, zoo.linear_schedule(), x_T, num_steps=2, eta=1.0)
    with pytest.raises(ValueError, match=r"noise must have shape \(S, B, C, H, W\) = \(2, 1, 3, 8, 8\)"):
        ddim_sample(small_model, zoo.linear_schedule(), x_T, num_steps=2, eta=1.0, noise=torch.randn(3, 1, 3, 8, 8))
    with pytest.raises(ValueError, match="T=100"):
        ddim_sample(small_model, zoo.linear_schedule(100), x_T, num_steps=2)
    with pytest.raises(ValueError, match="num_steps=0"):
        ddim_sample(small_model, zoo.linear_schedule(), x_T, num_steps=0)


class _Diverging(torch.nn.Module):  # epsilon grows with x: the feedback a badly trained net can have
    def forward(self, x, t):
        return x * 1e4


# The clipped eps rule bounds x by the clipped x0 (nothing diverges); the network's own eps, or no clip, do not.
@pytest.mark.parametrize("rule", [{"eps_rule": "model"}, {"clip_range": None}])
def test_sampling_never_returns_non_finite_values_silently(rule):
    from zoo.diffusion import NonFiniteSampleError

    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteSampleError, match=r"ddim_sample step \d+ \(t=\d+\): \d+ non-finite values"):
        zoo.ddim_sample(_Diverging(), zoo.linear_schedule(1000), x_T, num_steps=100, **rule)


def test_the_clipped_eps_rule_keeps_a_diverging_network_in_range():
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x = zoo.ddim_sample(_Diverging(), zoo.linear_schedule(1000), x_T, num_steps=100)
    assert bool(x.isfinite().all()) and float(x.abs().max()) <= 1.0


# --- DPM-Solver++(2M) ---------------------------------------------------------------------------

def _paper_dpmpp(x_t, eps, x0_last, a_t, a_prev, a_last):
    """Lu et al. 2022 Algorithm 2 in float64, written with lambda and exp (not the module's ratio form)."""
    alpha, sigma, lam = (lambda a: a**0.5), (lambda a: (1 - a) ** 0.5), (lambda a: 0.5 * np.log(a / (1 - a)))
    x0 = (x_t - sigma(a_t) * eps) / alpha(a_t)
    h = lam(a_prev) - lam(a_t)
    r = (lam(a_t) - lam(a_last)) / h
    d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_last
    return sigma(a_prev) / sigma(a_t) * x_t - alpha(a_prev) * np.expm1(-h) * d, x0


def test_dpmpp_step_matches_the_paper():
    rng = np.random.default_rng(0)
    x_t, eps, x0_last = (rng.standard_normal((2, 1, 3, 3)) for _ in range(3))
    a_t, a_prev, a_last = 0.3, 0.6, 0.1
    want, want_x0 = _paper_dpmpp(x_t, eps, x0_last, a_t, a_prev, a_last)
    got, got_x0 = dpmpp_2m_step(x_t, eps, x0_last, a_t, a_prev, a_last, clip_range=None)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_x0, want_x0, rtol=1e-12, atol=1e-12)
    got_t, _ = dpmpp_2m_step(*(torch.from_numpy(v) for v in (x_t, eps, x0_last)), a_t, a_prev, a_last, clip_range=None)
    np.testing.assert_allclose(got_t.numpy(), want, rtol=1e-12, atol=1e-12)


def test_dpmpp_first_and_last_steps_are_first_order():
    torch.manual_seed(0)
    x_t, eps, junk = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4) * 100
    # first step (no earlier prediction): the DDIM update, whatever x0_last holds
    first, _ = dpmpp_2m_step(x_t, eps, junk, 0.3, 0.6, 0.0, clip_range=None)
    torch.testing.assert_close(first, ddim_step(x_t, eps, 0.3, 0.6, clip_range=None))
    # last step (alpha-bar_prev = 1): the clipped x0, also for a one-step run (both at once), never NaN
    for a_last in (0.1, 0.0):
        last, x0 = dpmpp_2m_step(x_t, eps, junk, 0.9, 1.0, a_last)
        torch.testing.assert_close(last, x0)
        assert torch.isfinite(last).all() and last.abs().max() <= 1.0
    # per sample: one batch mixing a first, a middle and a last step equals the three alone
    a = [torch.tensor(v) for v in ([0.3, 0.3, 0.9], [0.6, 0.6, 1.0], [0.0, 0.1, 0.1])]
    both, _ = dpmpp_2m_step(x_t[:1].expand(3, -1, -1, -1), eps[:1].expand(3, -1, -1, -1), junk[:1].expand(3, -1, -1, -1), *a)
    for i in range(3):
        alone, _ = dpmpp_2m_step(x_t[:1], eps[:1], junk[:1], *(float(v[i]) for v in a))
        torch.testing.assert_close(both[i : i + 1], alone)


def test_dpmpp_numpy_and_torch_agree_in_float32():
    rng = np.random.default_rng(1)
    x_t, eps, x0_last = (rng.standard_normal((3, 3, 5, 5)).astype(np.float32) for _ in range(3))
    a = [np.array(v, np.float32) for v in ([0.1, 0.5, 0.9], [0.3, 0.7, 1.0], [0.0, 0.2, 0.5])]
    out_np, x0_np = dpmpp_2m_step(x_t, eps, x0_last, *a)
    out_t, x0_t = dpmpp_2m_step(*(torch.from_numpy(v) for v in (x_t, eps, x0_last, *a)))
    assert out_np.dtype == np.float32 and isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, out_t.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(x0_np, x0_t.numpy(), rtol=0, atol=1e-6)


def _paper_unipc(x_t, eps, x_last, x0_last, x0_last2, a_t, a_prev, a_last, a_last2):
    """UniPC written from Zhao et al. 2023 (Algorithms 2 and 3, data prediction, B(h) = e^h - 1) with a linear solve,
    in float64: UniC of the given order, then UniP-2, at scalar alpha-bars with every neighbour present or named 0."""
    lam = lambda a: 0.5 * np.log(a / (1 - a))  # noqa: E731
    alpha, sigma = (lambda a: a**0.5), (lambda a: (1 - a) ** 0.5)
    x0 = (x_t - sigma(a_t) * eps) / alpha(a_t)

    def update(x, a_from, a_to, m0, pairs, rho):  # sum_k rho_k D_k over the (m_k - m0) / r_k of ``pairs``
        h = lam(a_to) - lam(a_from)
        res = sum(r * d for r, d in zip(rho, pairs))
        return sigma(a_to) / sigma(a_from) * x - alpha(a_to) * np.expm1(-h) * (m0 + res)

    def coefficients(h, rks):  # R rho = b (the paper's eq. for B(h) = e^h - 1)
        hh, phi, fact, b = -h, np.expm1(-h) / -h - 1, 1, []
        for i in range(1, len(rks) + 1):
            b.append(phi * fact / np.expm1(hh))
            fact *= i + 1
            phi = phi / hh - 1 / fact
        return np.linalg.solve(np.array([[r ** (i - 1) for r in rks] for i in range(1, len(rks) + 1)]), np.array(b))

    x_c = x_t
    if a_last > 0:  # UniC of the order the last predictor had
        h = lam(a_t) - lam(a_last)
        if a_last2 > 0:
            r1 = (lam(a_last2) - lam(a_last)) / h
            rho = coefficients(h, [r1, 1.0])
            x_c = update(x_last, a_last, a_t, x0_last, [(x0_last2 - x0_last) / r1, x0 - x0_last], rho)
        else:
            x_c = update(x_last, a_last, a_t, x0_last, [x0 - x0_last], [0.5])
    if a_last > 0 and a_prev < 1:  # UniP-2
        h = lam(a_prev) - lam(a_t)
        r1 = (lam(a_last) - lam(a_t)) / h
        x_prev = update(x_c, a_t, a_prev, x0, [(x0_last - x0) / r1], [0.5])
    else:
        x_prev = x0 if a_prev == 1 else update(x_c, a_t, a_prev, x0, [], [])
    return x_prev, x_c, x0


@pytest.mark.parametrize("a_prev,a_last,a_last2", [(0.6, 0.1, 0.05), (0.6, 0.1, 0.0), (0.6, 0.0, 0.0), (1.0, 0.1, 0.05),
                                                   (1.0, 0.0, 0.0)])
def test_unipc_step_matches_the_paper_at_every_order(a_prev, a_last, a_last2):
    """Each path: corrector of order 2, 1 or none (the first step), predictor of order 2 or the clean x0 (the last)."""
    rng = np.random.default_rng(0)
    x_t, eps, x_last, x0_last, x0_last2 = (rng.standard_normal((2, 1, 3, 3)) for _ in range(5))
    want, want_c, want_x0 = _paper_unipc(x_t, eps, x_last, x0_last, x0_last2, 0.3, a_prev, a_last, a_last2)
    got = unipc_step(x_t, eps, x_last, x0_last, x0_last2, 0.3, a_prev, a_last, a_last2, clip_range=None)
    for g, w in zip(got, (want, want_c, want_x0, x0_last), strict=True):  # the state shifts: x0_last becomes x0_last2
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    got_t = unipc_step(*(torch.from_numpy(v) for v in (x_t, eps, x_last, x0_last, x0_last2)), 0.3, a_prev, a_last,
                       a_last2, clip_range=None)
    np.testing.assert_allclose(got_t[0].numpy(), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"alpha_bar_last2=1.0 is invalid: expected finite values in \[0, 1\)"):
        unipc_step(x_t, eps, x_last, x0_last, x0_last2, 0.3, a_prev, a_last, 1.0)


def test_unipc_per_sample_orders_and_float32_at_tiny_steps():
    """A batch mixing a first, a second, a middle and a last step equals each alone; the coefficients keep float32's
    precision where the step in log-SNR is tiny (1000 steps), where their closed form cancels to noise."""
    rng = np.random.default_rng(2)
    x_t, eps, x_last, x0_last, x0_last2 = (rng.standard_normal((4, 1, 3, 3)).astype(np.float32) for _ in range(5))
    a = [np.array(v, np.float32) for v in ([0.3, 0.3, 0.3, 0.9], [0.6, 0.6, 0.6, 1.0], [0.0, 0.1, 0.1, 0.5],
                                           [0.0, 0.0, 0.05, 0.2])]
    both = unipc_step(x_t, eps, x_last, x0_last, x0_last2, *a)
    for i in range(4):
        alone = unipc_step(x_t[i:i + 1], eps[i:i + 1], x_last[i:i + 1], x0_last[i:i + 1], x0_last2[i:i + 1],
                           *(float(v[i]) for v in a))
        for g, w in zip(both, alone, strict=True):
            np.testing.assert_allclose(g[i:i + 1], w, rtol=0, atol=1e-6)
    ab = zoo.linear_schedule(1000).alphas_cumprod
    tiny = [ab[500], ab[499], ab[501], ab[502]]  # adjacent timesteps: h ~ 1e-2 in log-SNR
    args = (x_t, eps, x_last, x0_last, x0_last2)
    want = unipc_step(*(v.astype(np.float64) for v in args), *tiny, clip_range=None)[1]
    got = unipc_step(*args, *(np.float32(v) for v in tiny), clip_range=None)[1]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), np.abs(got - want).max()


class _GaussianEps(torch.nn.Module):
    """The exact epsilon of data ~ N(0, s^2 I): eps(x, t) = sqrt(1 - a) x / (a s^2 + 1 - a).

    Along the probability-flow ODE x_t / sqrt(a_t s^2 + 1 - a_t) is constant, so the exact sample of
    x_T is known in closed form: the error of any solver against it is measurable.
    """

    def __init__(self, schedule, s):
        super().__init__()
        self.a = torch.from_numpy(schedule.alphas_cumprod.copy())
        self.s = s

    def forward(self, x, t):
        a = self.a[t].to(x.dtype).reshape(-1, 1, 1, 1)
        return (1 - a) ** 0.5 * x / (a * self.s**2 + 1 - a)


def test_the_multistep_solvers_are_second_order_and_beat_ddim():
    sched, s = zoo.linear_schedule(1000), 0.5
    model = _GaussianEps(sched, s)
    x_T = torch.randn(4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = x_T * s / (sched.alphas_cumprod[-1] * s**2 + 1 - sched.alphas_cumprod[-1]) ** 0.5
    err = {}
    for solver in ("ddim", "dpmpp_2m", "unipc"):
        for n in (10, 20):
            out = zoo.sample(model, sched, x_T, num_steps=n, solver=solver, spacing="trailing", clip_range=None)
            err[solver, n] = float((out - exact).abs().max())
    assert err["dpmpp_2m", 10] < err["ddim", 10] and err["dpmpp_2m", 20] < err["ddim", 20] / 2.5, err
    assert err["dpmpp_2m", 10] / err["dpmpp_2m", 20] > 3, err  # ~4 for second order; DDIM halves
    assert err["ddim", 10] / err["ddim", 20] < 2.5, err
    assert err["unipc", 10] / err["unipc", 20] > 3 and err["unipc", 20] < err["ddim", 20] / 2.5, err  # UniPC too


def test_dpmpp_sample_contract(small_model):
    sched = zoo.linear_schedule(1000)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = []
    a = zoo.dpmpp_2m_sample(small_model, sched, x_T, num_steps=5, callback=lambda i, t, eps, x: seen.append((i, t)))
    b = zoo.sample(small_model, sched, x_T.clone(), num_steps=5, solver="dpmpp_2m")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert seen == list(enumerate(ddim_timesteps(1000, 5).tolist())) and a.abs().max() <= 1.0
    # one step is one first-order step from alpha-bar_T to the clean image: DDIM's single step
    torch.testing.assert_close(zoo.dpmpp_2m_sample(small_model, sched, x_T, num_steps=1), zoo.ddim_sample(small_model, sched, x_T, num_steps=1))
    with pytest.raises(ValueError, match="which is deterministic: use eta=0"):
        zoo.sample(small_model, sched, x_T, num_steps=5, solver="dpmpp_2m", eta=0.5)
    with pytest.raises(ValueError, match="unknown solver 'euler'"):
        zoo.sample(small_model, sched, x_T, num_steps=5, solver="euler")


def test_step_pairs():
    t_prev, t_last = zoo.diffusion.step_pairs(np.array([900, 600, 300, 0]))
    assert t_prev.tolist() == [600, 300, 0, -1] and t_last.tolist() == [-1, 900, 600, 300]
    t_prev, t_last, t_last2 = zoo.diffusion.step_pairs(np.array([900, 600, 300, 0]), earlier=2)
    assert t_last.tolist() == [-1, 900, 600, 300] and t_last2.tolist() == [-1, -1, 900, 600]
    assert [a.tolist() for a in zoo.diffusion.step_pairs(np.array([5]), earlier=2)] == [[-1], [-1], [-1]]


@pytest.mark.parametrize("a_t,a_prev,match", [
    (float("nan"), 0.5, r"alpha_bar_t=nan is invalid: expected finite values in \(0, 1\)"),
    (1.0, 1.0, r"alpha_bar_t=1.0 is invalid"),
    (0.3, 1.5, r"alpha_bar_prev=1.5 is invalid: expected finite values in \(0, 1\]"),
    (0.3, np.array([0.5, -0.1]), r"alpha_bar_prev=.* is invalid"),
])
def test_solver_steps_refuse_bad_alphas_instead_of_returning_nan(a_t, a_prev, match):
    x = np.zeros((2, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match=match):
        ddim_step(x, x, a_t, a_prev)
    with pytest.raises(ValueError, match=match):
        dpmpp_2m_step(x, x, x, a_t, a_prev, 0.1)
    with pytest.raises(ValueError, match=r"alpha_bar_last=1.0 is invalid: expected finite values in \[0, 1\)"):
        dpmpp_2m_step(x, x, x, 0.3, 0.5, 1.0)
