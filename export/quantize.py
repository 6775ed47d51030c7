"""int8 variants of the denoiser and fused-step graphs: static quantization of the inner convolutions.

The network's hidden x hidden convolutions (about 90% of its FLOPs at hidden 64) run as
``QLinearConv`` with per-channel int8 weights and uint8 activations; everything else stays fp32:

- the first convolution, because its input holds the time channel: sharing one uint8 scale with
  image values in [-4, 4] rounds t/T to about 1/30, i.e. the model sees t only to ~30 timesteps;
- the last convolution, because its output is epsilon itself, which the DDIM update divides by
  sqrt(alpha-bar) (measured on the demo model: quantizing both costs 4-5x more final-image drift);
- the DDIM update, the alpha-bar lookups and the noise: they are exact fp32 arithmetic.

Activation ranges are calibrated on the model's own sampling trajectories (``calibration_states``):
the x_t it meets at every timestep of a DDIM run from Gaussian noise, so no dataset is needed.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch

from zoo.diffusion import DEFAULT_EPS_RULE, ddim_timesteps
from zoo.samplers import ddim_sample
from zoo.schedules import Schedule

__all__ = ["quantize_int8", "calibration_states", "inner_nodes", "CALIBRATION_IMAGES", "CALIBRATION_STEPS"]

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 16  # trajectories sampled from noise for the activation ranges
CALIBRATION_STEPS = 50  # DDIM steps per trajectory: every 20th timestep of T=1000 is seen


def calibration_states(
    model: torch.nn.Module, schedule: Schedule, shape: tuple[int, int, int], seed: int, clip_range: float | None = 1.0,
    eps_rule: str = DEFAULT_EPS_RULE, images: int = CALIBRATION_IMAGES, steps: int = CALIBRATION_STEPS,
) -> list[tuple[np.ndarray, int, int]]:
    """``(x_t, t, t_prev)`` at every step of an eager fp32 DDIM run (``ddim_sample``) of ``images`` trajectories."""
    steps = min(steps, schedule.num_train_timesteps)  # a model with fewer training timesteps visits all of them
    x_T = torch.randn((images, *shape), generator=torch.Generator().manual_seed(seed))
    states = [x_T.numpy().copy()]
    ddim_sample(model, schedule, x_T, num_steps=steps, clip_range=clip_range, eps_rule=eps_rule,
                callback=lambda i, t, eps, x_prev: states.append(x_prev.numpy().copy()))
    ts = [int(t) for t in ddim_timesteps(schedule.num_train_timesteps, steps)]
    return list(zip(states, ts, ts[1:] + [-1]))  # the final x_0 is no network input


def inner_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes strictly between the first and the last ``Conv``: the part that runs in int8."""
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if len(convs) < 3:
        raise ValueError(f"int8 quantization needs a network with at least 3 convolutions; this graph has {len(convs)}")
    first, last = convs[0], convs[-1]
    producer = {o: n for n in graph.node for o in n.output}
    ancestors: set[str] = set()  # of the last conv's data input
    stack = [last.input[0]]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in ancestors:
            ancestors.add(node.name)
            stack.extend(node.input)
    descendants: set[str] = set()  # of the first conv's output
    frontier = set(first.output)
    for node in graph.node:  # graph.node is topologically sorted
        if frontier.intersection(node.input):
            descendants.add(node.name)
            frontier.update(node.output)
    return [n.name for n in graph.node if n.name in ancestors and n.name in descendants]


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_int8(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    """Statically quantize the inner convolutions of an exported graph (QOperator format).

    Weights int8 per output channel, activations uint8 with ranges from ``feeds`` (min/max), the
    combination onnxruntime's x86 kernels are built for (u8 x s8 products).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="diffzoo-int8-") as tmp:
        src, pre, out = (str(Path(tmp) / n) for n in ("model.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, src)
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        nodes = inner_nodes(onnx.load(pre).graph)
        quantize_static(
            pre, out, _Feeds(feeds), quant_format=QuantFormat.QOperator, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantized = onnx.load(out)
    n_q = sum(n.op_type == "QLinearConv" for n in quantized.graph.node)
    if n_q == 0:
        raise RuntimeError("onnxruntime's quantizer left no convolution in int8")
    log.info("int8: %d convolutions quantized", n_q)
    return quantized
