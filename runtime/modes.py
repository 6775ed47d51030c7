"""How a plan's batch runs on a bundle's sessions: the three modes and the CUDA-graph replay. numpy + onnxruntime only.

``loop`` runs the whole-loop graph once; ``fused`` the fused step graph once per timestep; ``step``
the denoiser graph, then the solver's step graph, per timestep (a guided bundle's denoiser on the 2B
batch, guidance on the host). ``fused`` and ``step`` keep x and the solver's state on the device
between steps with IO binding, their shapes checked after every step; on CUDA with
``CudaOptions.cuda_graph`` the fused step is replayed as CUDA graphs. Each step's host inputs come
from ``runtime.feeds``, the carried state from the solver table (``Plan.state``).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import onnxruntime as ort

from runtime.feeds import bind, by_name, step_feeds, step_list
from runtime.requests import Conditioning, Plan
from runtime.runs import GraphRun
from runtime.sessions import Sessions
from zoo.conditioning import guided_eps

__all__ = ["StepCallback", "run_mode"]

# callback(i, t, eps or None, x_prev) after each step, for parity reports; eps is None where the
# mode does not expose it (fused), and the loop mode reports only its final x_0.
StepCallback = Callable[[int, int, "np.ndarray | None", np.ndarray], None]


def run_mode(sessions: Sessions, alphas: np.ndarray, plan: Plan, x_T: np.ndarray, noise: np.ndarray | None,
             cond: Conditioning, callback: StepCallback | None = None) -> np.ndarray:
    """x_0 of one checked batch of ``plan`` in its mode (``alphas``: the schedule's float32 alpha-bars), interruptibly:
    a signal terminates the graph run in flight (``runtime.runs.GraphRun``)."""
    run = GraphRun(plan.artifact, sessions.path)
    if plan.mode == "loop":
        work = partial(_run_loop, sessions, run, plan, x_T, noise, callback, cond)
    elif plan.mode == "fused" and sessions.device == "cuda" and sessions.cuda.cuda_graph:
        work = partial(_run_fused_cuda_graph, sessions, alphas, run, plan, x_T, noise, callback, cond)
    else:
        work = partial(_run_per_step, sessions, alphas, run, plan, x_T, noise, callback, cond)
    return run.interruptibly(work)


def _run_loop(sessions: Sessions, run: GraphRun, plan: Plan, x_T, noise, callback, cond: Conditioning) -> np.ndarray:
    """The whole-loop graph: one session run for every step; the noise and eta inputs only where the solver has them."""
    sess = sessions.session(plan.artifact)
    feed = {"x_T": x_T, "timesteps": plan.timesteps, **cond.feeds}
    noise_feed = {"noise": noise, "eta": np.array(plan.eta, np.float32)}
    feed.update({n: noise_feed[n] for n in plan.solver.noise_inputs(plan.stochastic)})
    (x0,) = run(sess.run, ["x_0"], by_name(sess, feed))
    if callback is not None:
        callback(len(plan.timesteps) - 1, int(plan.timesteps[-1]), None, x0)
    return x0


def _run_per_step(sessions: Sessions, alphas: np.ndarray, run: GraphRun, plan: Plan, x_T, noise, callback,
                  cond: Conditioning) -> np.ndarray:
    """``fused``: the fused step per timestep; ``step``: the denoiser, then the solver step.

    The carried values (x, and DPM-Solver++'s x0 prediction) stay on the device between steps; their shapes are
    checked after every step (a graph whose output grows is stopped at once, not fed back).
    """
    dev, dev_id = sessions.ort_device
    b = x_T.shape[0]
    sess = sessions.session(run.artifact)
    io = sess.io_binding()
    inputs = [i.name for i in sess.get_inputs()]
    pairs = plan.state  # (input, output) of x and the solver's state: x_t -> x_prev[, x0_last -> x0]
    first = {"x_t": x_T, **{i: np.zeros_like(x_T) for i, _ in pairs[1:]}}  # the state starts at zeros
    state = {i: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(first[i]), dev, dev_id) for i, _ in pairs}
    if plan.mode == "step":
        den = sessions.session(plan.denoiser)
        io_den = den.io_binding()
    steps = step_list(plan.timesteps)
    for i, t in enumerate(plan.timesteps):
        host = step_feeds(i, steps, b, inputs, alphas, noise, plan.eta, cond.feeds)
        eps_host = None
        if plan.mode == "step" and cond.conditions:  # guided on the host: the denoiser on the 2B batch, then guide
            eps_host = guided_eps(lambda xx, tt, **c: run(den.run, ["eps"], {"x": xx, "t": tt, **c})[0],
                                  state["x_t"].numpy(), np.full(b, t, np.int64), cond.conditions, cond.feeds)
            bind(io, state, {**host, "eps": eps_host})
        elif plan.mode == "step":
            bind(io_den, {"x": state["x_t"]}, {"t": np.full(b, t, np.int64)})
            io_den.bind_output("eps", dev, dev_id)
            run(den.run_with_iobinding, io_den)
            eps = io_den.get_outputs()[0]
            bind(io, {**state, "eps": eps}, host)
            if callback is not None:
                eps_host = eps.numpy()
        else:
            bind(io, state, host)
        for _, name in pairs:
            io.bind_output(name, dev, dev_id)
        run(sess.run_with_iobinding, io)
        state = dict(zip((name for name, _ in pairs), io.get_outputs(), strict=True))  # outputs in binding order
        run.check_shapes(i, state, x_T.shape)
        if callback is not None:
            callback(i, int(t), eps_host, state["x_t"].numpy())
    return state["x_t"].numpy()

def _run_fused_cuda_graph(sessions: Sessions, alphas: np.ndarray, run: GraphRun, plan: Plan, x_T, noise, callback,
                          cond: Conditioning) -> np.ndarray:
    """The fused step replayed as CUDA graphs: fixed device buffers, two graphs ping-ponging the state.

    onnxruntime captures a graph on its first run per ``gpu_graph_id`` and replays it after, on the
    device addresses it was captured with. So each batch size gets its own two graph ids and its own
    buffers, kept for the sampler's life (``_graphs``); every call writes its values into them in
    place (x_T, the zero state, eta, labels and guidance; t and the noise per step).
    """
    artifact = run.artifact
    sess = sessions.session(artifact, cuda_graph=True)
    b = x_T.shape[0]
    inputs = [i.name for i in sess.get_inputs()]
    pairs = plan.state
    steps = step_list(plan.timesteps)
    first = {"x_t": x_T, **{i: np.zeros_like(x_T) for i, _ in pairs[1:]}}  # the state starts at zeros
    host0 = step_feeds(0, steps, b, inputs, alphas, noise, plan.eta, cond.feeds)
    key = (artifact, b)
    if key not in sessions.cuda_graphs:
        sessions.cuda_graphs[key] = _capture_buffers(sessions, sess, pairs, first, host0, 2 * len(sessions.cuda_graphs))
    bufs, shared, runs = sessions.cuda_graphs[key]
    for i, _ in pairs:
        bufs[i][0].update_inplace(np.ascontiguousarray(first[i]))
    for name, v in host0.items():
        shared[name].update_inplace(np.ascontiguousarray(v))
    for i, t in enumerate(plan.timesteps):
        if i:
            for name, v in step_feeds(i, steps, b, inputs, alphas, noise, plan.eta, cond.feeds).items():
                if name not in ("eta", *cond.feeds):  # constants of the run, written above
                    shared[name].update_inplace(np.ascontiguousarray(v))
        io, ro = runs[i % 2]
        run(sess.run_with_iobinding, io, options=ro)
        if callback is not None:
            callback(i, int(t), None, bufs["x_t"][(i + 1) % 2].numpy())
    return bufs["x_t"][len(plan.timesteps) % 2].numpy()

def _capture_buffers(sessions: Sessions, sess, pairs, first: dict[str, np.ndarray], host0: dict[str, np.ndarray], base_id: int):
    """One batch size's device buffers and its two bound runs (graph ids base_id + 1, + 2)."""
    dev_id = sessions.cuda.device_id

    def dev_array(a: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", dev_id)

    bufs = {i: [dev_array(first[i]), dev_array(np.empty_like(first[i]))] for i, _ in pairs}
    shared = {n: dev_array(v) for n, v in host0.items()}  # t, t_prev[, t_last, noise, eta, labels, guidance]
    runs = []
    for g in range(2):  # graph g reads buffer g and writes buffer 1 - g
        io = sess.io_binding()
        for name, v in {**{i: bufs[i][g] for i, _ in pairs}, **shared}.items():
            io.bind_ortvalue_input(name, v)
        for i, o in pairs:
            io.bind_ortvalue_output(o, bufs[i][1 - g])
        ro = ort.RunOptions()
        ro.add_run_config_entry("gpu_graph_id", str(base_id + g + 1))
        runs.append((io, ro))
    return bufs, shared, runs
