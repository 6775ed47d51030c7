"""ONNX export of a torch module with the torch.export-based exporter (``dynamo=True``).

Follows timm's ``utils/onnx.py``: eval mode, example inputs, named inputs and outputs, dynamic
axes keyed by the names actually used, the exporter flavour chosen explicitly, then the checker.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import warnings

import onnx
import torch

from export.format.artifacts import ArtifactSpec
from export.format.graphs import Weights
from export.network import TRANSLATIONS

__all__ = ["DEFAULT_OPSET", "SUPPORTED_OPSETS", "EXPORTER", "export_onnx", "check_onnx"]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20
# Opsets the torch.export-based exporter writes natively and onnxruntime >= 1.20 runs.
SUPPORTED_OPSETS = tuple(range(18, 24))
EXPORTER = "torch.onnx.export(dynamo=True)"


def export_onnx(module: torch.nn.Module, spec: ArtifactSpec, example: dict[str, torch.Tensor], opset: int,
                weights: Weights | None = None) -> onnx.ModelProto:
    """Export ``module`` with the inputs/outputs of ``spec``; every str dim of the spec stays dynamic.

    With ``weights``, each initializer that holds one of its tensors refers to it before the graph
    becomes a protobuf (``export.format.graphs.externalize``'s rule, ``Weights.holding``): the
    graph is never built with its weights inside, which for a model past 2 GB could not be
    serialized at all, and would hold a copy of them in memory while the export runs.
    """
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = []
    for io_spec in spec.inputs:
        axes = {}
        for axis, d in enumerate(io_spec.dims):
            if isinstance(d, str):
                axes[axis] = dims.setdefault(d, torch.export.Dim(d))
        dynamic_shapes.append(axes)
    args = tuple(example[i.name] for i in spec.inputs)
    shapes: tuple = tuple(dynamic_shapes)
    if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()):
        shapes = (shapes,)  # forward(*inputs) (the solver modules): the table's inputs arrive as one tuple
    # The exporter reports progress with print() and warns about internals; keep the caller's output clean.
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)  # e.g. "torchvision is not installed", irrelevant here
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                args,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=shapes,
                custom_translation_table=TRANSLATIONS,  # export.network's placeholder: one node where the network goes
                optimize=False,  # _optimize: the exporter's optimisation, every parameter kept as it is
                verbose=False,
            )
            _optimize(program.model)
            _name(program.model.graph.inputs, [i.name for i in spec.inputs])  # after optimising, as the exporter does
            _name(program.model.graph.outputs, [o.name for o in spec.outputs])
    finally:
        torch_onnx_log.setLevel(level)
    if weights is not None:
        _refer_to(program.model.graph, weights)
    model = program.model_proto
    if model.functions:  # inline local functions so graph surgery (the Loop) sees plain nodes
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    return model


def _optimize(model) -> None:
    """The exporter's own optimisation (``ONNXProgram.optimize``: constant folding, rewrites, fusions), in place, with
    every parameter and buffer left a named initializer of its own.

    They are graph inputs while it runs, which no pass folds, rewrites or merges: a reshaped
    GroupNorm scale or a linear layer's transposed weight stays a node reading the parameter
    (onnxruntime folds it when a session is built), and two parameters equal at initialisation stay
    two. So every graph refers to the weights by name (``export.format.graphs.externalize``), and a
    graph's structure never depends on the values of the weights it was exported with.
    """
    from onnxscript import optimizer
    from onnxscript.rewriter import onnx_fusions

    graph = model.graph
    params = [v for v in graph.initializers.values() if v not in graph.inputs]
    graph.inputs.extend(params)
    quiet = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)  # "skipped deduplication of ... as it is a graph input", once per parameter
    try:
        optimizer.optimize_ir(model)
        onnx_fusions.fuse(model)
    finally:
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)
        for v in params:
            graph.inputs.remove(v)
    for v in params:
        if not v.uses() and not v.is_graph_output():  # a lifted constant the optimisation made unused
            graph.initializers.pop(v.name)


def _refer_to(graph, weights: Weights) -> None:
    """Each initializer of the exporter's (onnx_ir) ``graph`` that holds a tensor of ``weights``, as a reference to it."""
    import onnx_ir as ir

    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is None or isinstance(tensor, ir.ExternalTensor):
            continue
        stored = weights.holding(value.name, tensor.numpy())
        if stored is not None:
            value.const_value = ir.ExternalTensor(weights.name, stored.offset, stored.length, tensor.dtype,
                                                  shape=tensor.shape, name=value.name)


def _name(values, names: list[str]) -> None:
    if len(values) != len(names):
        raise ValueError(f"the exported graph has {len(values)} inputs or outputs, the artifact table {len(names)}: {names}")
    for value, name in zip(values, names):
        value.name = name


def check_onnx(model: onnx.ModelProto | str | os.PathLike) -> None:
    """``onnx.checker`` with ``full_check=True`` (also runs strict shape inference); a graph whose weights are external
    data is checked by its path, beside them."""
    onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model), full_check=True)
