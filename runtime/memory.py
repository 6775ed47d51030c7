"""How much memory a batch of a bundle's graph needs: its activations, estimated from the graph itself.

The peak of the tensors alive at once when the graph's nodes run in their order (each output allocated when its
node runs, each input freed after its last reader), plus the scratch of the convolution running (its unfolded
input), at the shapes ONNX shape inference gives for one image: what onnxruntime's memory planner reuses buffers
within. Multiplied by the batch, and by ``SAFETY`` for what the planner does not share. Torch-free.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import shape_inference

from zoo import resources

__all__ = ["activation_bytes_per_image", "SAFETY", "sample_bytes", "fit_batch"]

log = logging.getLogger(__name__)

# onnxruntime's CPU provider runs convolutions in blocked layouts (channels padded to 8 or 16) and its arena rounds
# allocations up: a batch's measured peak RSS growth was 0.35-1.45x the estimate without this factor (three models,
# every mode; docs/ARCHITECTURE.md, "Memory").
SAFETY = 2.0

_DIM_SIZES = {"batch": 1, "steps": 1}  # one image, one step; height and width are the bundle's


def activation_bytes_per_image(graph: bytes | onnx.ModelProto, height: int, width: int) -> int:
    """Bytes of activations one image adds to a run of ``graph`` (a fused step or denoiser), ``SAFETY`` included.

    Tensors whose shape inference leaves unknown count as the largest known one: an estimate errs high.
    """
    proto = graph if isinstance(graph, onnx.ModelProto) else onnx.load_model_from_string(graph)
    sizes = {**_DIM_SIZES, "height": height, "width": width}
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    del fixed.graph.value_info[:]
    for init in fixed.graph.initializer:  # weights: their dims are what inference reads; only shape-like tensors' values
        if np.prod(init.dims) > 1024:
            init.ClearField("raw_data")
    for vi in list(fixed.graph.input) + list(fixed.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in sizes:
                d.dim_value = sizes[d.dim_param]  # setting the value clears the name
    try:
        inferred = shape_inference.infer_shapes(fixed, data_prop=True).graph
    except (shape_inference.InferenceError, RuntimeError, ValueError) as e:  # a graph inference cannot follow
        log.warning("shape inference failed (%s): the memory estimate counts the inputs only", type(e).__name__)
        inferred = fixed.graph
    infos = {vi.name: vi for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    nbytes = {name: _bytes(vi) for name, vi in infos.items()}
    weights = {init.name: list(init.dims) for init in inferred.initializer}
    largest = max([v for v in nbytes.values() if v is not None] or [0])
    last_use: dict[str, int] = {}
    for i, node in enumerate(inferred.node):
        for name in node.input:
            last_use[name] = i
    outputs = {o.name for o in inferred.output}
    live = {i.name: nbytes.get(i.name) or 0 for i in inferred.input if i.name not in weights}
    peak = sum(live.values())
    for i, node in enumerate(inferred.node):
        for name in node.output:
            if name:
                size = nbytes.get(name)
                live[name] = largest if size is None else size
        peak = max(peak, sum(live.values()) + _workspace(node, weights, infos))
        for name in node.input:
            if last_use.get(name) == i and name not in outputs:
                live.pop(name, None)
    return int(SAFETY * peak)


def sample_bytes(shape: tuple[int, ...], n: int, batch: int, num_steps: int, stochastic: bool, activation: int = 0) -> int:
    """Host memory of sampling n images of ``shape`` in batches of ``batch``: the results (and their concatenation),
    one batch's x_T, x, outputs and per-step noise, and ``activation`` bytes per image of the batch (the graph's)."""
    image = 4 * int(np.prod(shape))  # bytes of one float32 image
    return image * (2 * n + batch * (4 + (num_steps if stochastic else 0))) + batch * activation


def fit_batch(shape: tuple[int, ...], n: int, batch: int, num_steps: int, stochastic: bool, activation: int,
              what: str, hint: str) -> int:
    """The largest batch size up to ``batch`` whose run, beside the n results, fits in the memory this process can
    still get (``zoo.resources.available_memory``); ``InsufficientMemoryError`` naming the estimate and the limit
    when not even one image does."""
    avail = resources.available_memory()
    if avail is None:
        return batch
    results = sample_bytes(shape, n, 0, num_steps, stochastic)
    per_image = sample_bytes(shape, 0, 1, num_steps, stochastic, activation)
    fits = min(batch, int((avail - results) // per_image))
    if fits < 1:
        resources.check_fits(results + per_image, what, hint)  # raises, naming the limit
    return max(fits, 1)


def _workspace(node: onnx.NodeProto, weights: dict[str, list[int]], infos: dict[str, onnx.ValueInfoProto]) -> int:
    """Scratch a node needs while it runs: a convolution with a kernel past 1x1 unfolds its input (im2col), C_in/group
    x kh x kw values for every output pixel."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights or node.output[0] not in infos:
        return 0
    w = weights[node.input[1]]  # (C_out, C_in / group, kh, kw)
    dims = [d.dim_value for d in infos[node.output[0]].type.tensor_type.shape.dim]  # (B, C_out, H, W)
    if len(w) != 4 or w[2] * w[3] == 1 or len(dims) != 4 or not all(dims):
        return 0
    return 4 * w[1] * w[2] * w[3] * dims[0] * dims[2] * dims[3]


def _bytes(vi: onnx.ValueInfoProto) -> int | None:
    t = vi.type.tensor_type
    if not t.HasField("shape") or any(not d.HasField("dim_value") for d in t.shape.dim):
        return None
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return itemsize * int(np.prod([d.dim_value for d in t.shape.dim], dtype=np.int64))
