"""The network traced once per export: the fused steps are traced around a placeholder node, then the denoiser's graph
is spliced into its place.

Tracing a network with dynamic shapes costs the torch.export-based exporter milliseconds per op in
symbolic shape reasoning (18 s of the 35.7 M DDPM CIFAR-10 UNet's 26 s denoiser export here), and
every fused step holds the network. So ``FusedSolverStep`` is traced with ``Placeholder`` as its model: one custom op,
``diffzoo::network``, written to ONNX as one node of the ``diffzoo`` domain (``TRANSLATIONS``, the
exporter's ``custom_translation_table``); ``splice`` replaces that node by the nodes of the already
exported denoiser graph, wired by position (the artifact table's order: x, t, conditioning). The
guidance (``zoo.conditioning.guided_eps``) and the solver's update around it are traced as before,
and every spliced graph is verified against eager torch like any other, so a wire crossed here fails
its check.
"""

from __future__ import annotations

import onnx
import torch
from onnx.defs import OpSchema
from torch import nn

__all__ = ["DOMAIN", "Placeholder", "TRANSLATIONS", "splice"]

DOMAIN = "diffzoo"  # the placeholder's ONNX domain; no graph leaves the exporter with a node of it
_PREFIX = "network/"  # what the network's own values, nodes and initializers are named under in a spliced graph


@torch.library.custom_op("diffzoo::network", mutates_args=())
def _network(x: torch.Tensor, t: torch.Tensor, conditioning: list[torch.Tensor]) -> torch.Tensor:
    raise RuntimeError("diffzoo::network is a placeholder for tracing: the exporter splices the network's graph in")


@_network.register_fake
def _(x: torch.Tensor, t: torch.Tensor, conditioning: list[torch.Tensor]) -> torch.Tensor:
    return torch.empty_like(x)  # eps has x's shape (the denoiser artifact's one output)


class Placeholder(nn.Module):
    """Stands for ``model`` while a fused step is traced: ``forward(x, t, **conditioning)`` as the model's, one
    ``diffzoo::network`` op in the trace taking the conditioning in the order of ``names`` (the denoiser artifact's
    conditioning inputs)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.conditioning = getattr(model, "conditioning", None)  # the model's declaration, which guided_eps reads
        self.names = names

    def forward(self, x: torch.Tensor, t: torch.Tensor, **conditioning: torch.Tensor) -> torch.Tensor:
        return _network(x, t, [conditioning[n] for n in self.names])


def _translation():
    from onnxscript import values

    schema = OpSchema(
        "Network", DOMAIN, 1,
        inputs=[OpSchema.FormalParameter("inputs", "T", param_option=OpSchema.FormalParameterOption.Variadic,
                                         is_homogeneous=False)],
        outputs=[OpSchema.FormalParameter("eps", "F")],
        type_constraints=[("T", ["tensor(float)", "tensor(int64)"], "x, t, conditioning"), ("F", ["tensor(float)"], "eps")])
    node = values.Op(values.Opset(DOMAIN, 1), "Network", schema)

    def network(x, t, conditioning):
        return node(x, t, *conditioning)

    return network


TRANSLATIONS = {torch.ops.diffzoo.network.default: _translation()}


def splice(graph: onnx.ModelProto, network: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``graph`` with its one placeholder node replaced by the nodes of ``network`` (the denoiser graph):
    the placeholder's inputs and output become the network's, every other value, node and initializer of the
    network is named under ``network/`` (a weight's name keeps its suffix, which ``externalize`` binds by)."""
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    at = [i for i, n in enumerate(out.graph.node) if n.domain == DOMAIN]
    net = network.graph
    if len(at) != 1:
        raise ValueError(f"a traced fused step holds {len(at)} placeholder nodes; exactly one was expected")
    node = out.graph.node[at[0]]
    if len(node.input) != len(net.input) or len(node.output) != len(net.output):
        raise ValueError(f"the placeholder takes {list(node.input)} -> {list(node.output)}, the network graph "
                         f"{[v.name for v in net.input]} -> {[v.name for v in net.output]}")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in net.node for a in n.attribute):
        raise ValueError("the network graph has subgraphs, which splice does not rename")
    produced = {o for n in net.node for o in n.output}
    if not all(v.name in produced for v in net.output):
        raise ValueError("an output of the network graph is not computed by one of its nodes")
    names = {v.name: a for v, a in zip(net.input, node.input)} | {v.name: b for v, b in zip(net.output, node.output)}

    def renamed(name: str) -> str:
        return names.get(name, _PREFIX + name) if name else name  # "": an optional input left out

    nodes = []
    for n in net.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.name = _PREFIX + n.name
        copy.input[:] = [renamed(v) for v in n.input]
        copy.output[:] = [renamed(v) for v in n.output]
        nodes.append(copy)
    rest = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(rest[:at[0]] + nodes + rest[at[0] + 1:])
    for tensor in net.initializer:
        copy = out.graph.initializer.add()
        copy.CopyFrom(tensor)
        copy.name = renamed(tensor.name)
    for info in net.value_info:  # its symbolic dims renamed too: the network's batch is the guided batch, 2B
        copy = out.graph.value_info.add()
        copy.CopyFrom(info)
        copy.name = renamed(info.name)
        for dim in copy.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = _PREFIX + dim.dim_param
    versions = {o.domain: o.version for o in out.opset_import if o.domain != DOMAIN}
    for o in network.opset_import:
        if versions.setdefault(o.domain, o.version) != o.version:
            raise ValueError(f"the network graph imports {o.domain or 'ai.onnx'} {o.version}, the fused step "
                             f"{versions[o.domain]}")
    del out.opset_import[:]
    out.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in versions.items())
    return out
