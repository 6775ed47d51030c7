"""ONNX export of a torch module with the torch.export-based exporter (``dynamo=True``).

Follows timm's ``utils/onnx.py``: eval mode, example inputs, named inputs and outputs, dynamic
axes keyed by the names actually used, the exporter flavour chosen explicitly, then the checker.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings

import onnx
import torch

from export.format.artifacts import ArtifactSpec

__all__ = ["DEFAULT_OPSET", "SUPPORTED_OPSETS", "EXPORTER", "export_onnx", "check_onnx"]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20
# Opsets the torch.export-based exporter writes natively and onnxruntime >= 1.20 runs.
SUPPORTED_OPSETS = tuple(range(18, 24))
EXPORTER = "torch.onnx.export(dynamo=True)"


def export_onnx(module: torch.nn.Module, spec: ArtifactSpec, example: dict[str, torch.Tensor], opset: int) -> onnx.ModelProto:
    """Export ``module`` with the inputs/outputs of ``spec``; every str dim of the spec stays dynamic."""
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
                input_names=[i.name for i in spec.inputs],
                output_names=[o.name for o in spec.outputs],
                dynamic_shapes=shapes,
                optimize=True,
                verbose=False,
            )
    finally:
        torch_onnx_log.setLevel(level)
    model = program.model_proto
    if model.functions:  # inline local functions so graph surgery (the Loop) sees plain nodes
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    return model


def check_onnx(model: onnx.ModelProto) -> None:
    """``onnx.checker`` with ``full_check=True`` (also runs strict shape inference)."""
    onnx.checker.check_model(model, full_check=True)
