"""What a step graph is fed, on the host: each step's timesteps, alpha-bars, noise and conditioning, by input name.

The runtime's modes keep x and the solver's state on the device and bind these beside them; a
session without IO binding (OpenVINO, the bench's plain onnxruntime backend) runs the whole fused
loop here (``fused_on_host``). numpy + onnxruntime only.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnxruntime as ort

from export.format.artifacts import carried
from zoo.diffusion import step_pairs
from zoo.solvers import EARLIER, alpha_bars

__all__ = ["step_list", "step_feeds", "fused_on_host", "by_name", "bind"]


def by_name(sess: ort.InferenceSession, feed: dict[str, Any]) -> dict[str, Any]:
    """Feed inputs by the names the session declares (never by position); a missing one is a bug."""
    names = [i.name for i in sess.get_inputs()]
    assert set(names) == set(feed), (names, sorted(feed))
    return {n: feed[n] for n in names}


def bind(io: ort.IOBinding, device_values: dict[str, ort.OrtValue], host_values: dict[str, np.ndarray]) -> None:
    for name, v in device_values.items():
        io.bind_ortvalue_input(name, v)
    for name, a in host_values.items():
        io.bind_cpu_input(name, np.ascontiguousarray(a))


def step_list(timesteps: np.ndarray) -> list[tuple[int, ...]]:
    """(t, t_prev, t_last, t_last2) of every step (every earlier timestep of ``EARLIER``), as Python ints
    (see ``zoo.diffusion.step_pairs``)."""
    return [tuple(int(v) for v in step) for step in zip(timesteps, *step_pairs(timesteps, len(EARLIER)))]


def step_feeds(i: int, steps: list[tuple[int, ...]], b: int, names: list[str], alphas: np.ndarray,
               noise: np.ndarray | None, eta: float, cond: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The host inputs of step i that ``names`` (a step graph's inputs) asks for, for a batch of b images.

    ``cond``: a class-conditional bundle's ``labels`` and ``guidance`` (B,), the same on every step.
    """
    names_t = ("t", "t_prev", *(f"t_{w}" for w in EARLIER))
    names_a = ("alpha_bar_t", "alpha_bar_prev", *(f"alpha_bar_{w}" for w in EARLIER))
    values = {
        **{n: (lambda v=v: np.full(b, v, np.int64)) for n, v in zip(names_t, steps[i], strict=True)},
        **{n: (lambda v=v: np.full(b, v, np.float32)) for n, v in zip(names_a, alpha_bars(alphas, *steps[i]), strict=True)},
        "noise": lambda: noise[i],
        "eta": lambda: np.array(eta, np.float32),
        **{k: (lambda v=v: v) for k, v in (cond or {}).items()},
    }
    return {n: values[n]() for n in names if n in values}


def fused_on_host(run: Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]], solver: str, inputs: list[str],
                  x_T: np.ndarray, timesteps: np.ndarray, alphas: np.ndarray, noise: np.ndarray | None = None,
                  eta: float = 0.0, cond: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """A fused step's loop with every value on the host: ``run(feed, output_names) -> outputs``.

    What a session without IO binding runs (OpenVINO, a plain onnxruntime session in the bench);
    the runtime's own modes keep the state on the device instead. ``cond``: a class-conditional
    bundle's ``labels`` and ``guidance`` (B,) (``step_feeds``).
    """
    pairs = carried(solver)
    state = {"x_t": x_T, **{i: np.zeros_like(x_T) for i, _ in pairs[1:]}}  # the state starts at zeros
    steps = step_list(timesteps)
    for i in range(len(steps)):
        feed = {**state, **step_feeds(i, steps, len(x_T), inputs, alphas, noise, eta, cond)}
        state = dict(zip((name for name, _ in pairs), run(feed, [o for _, o in pairs]), strict=True))
    return state["x_t"]
