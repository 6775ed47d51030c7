"""The whole DDIM sampler as one ONNX graph: an ONNX ``Loop`` whose body is the fused step graph.

Built by graph surgery on the exported fused step (not by scripting a Python loop), so the body is
exactly the verified fused-step graph and the number of steps is the length of the ``timesteps``
input, chosen at run time. Noise, when used, is an input (S, B, C, H, W): nothing is drawn inside.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

__all__ = ["build_sampler_graph"]

_PREFIX = "step/"


def _rename(name: str) -> str:
    return _PREFIX + name if name else name  # "" marks an omitted optional input


def build_sampler_graph(fused: onnx.ModelProto, stochastic: bool) -> onnx.ModelProto:
    """Wrap a fused step ``(x_t, t, t_prev[, noise, eta]) -> x_prev`` into a sampler.

    The result maps ``(x_T, timesteps[, noise, eta]) -> x_0`` with ``timesteps`` the descending
    int64 list of the run (S,), and ``noise`` of shape (S, B, C, H, W) for the stochastic variant.
    """
    g = fused.graph
    expected = ["x_t", "t", "t_prev"] + (["noise", "eta"] if stochastic else [])
    got = [i.name for i in g.input]
    assert got == expected and [o.name for o in g.output] == ["x_prev"], (got, [o.name for o in g.output])
    assert not fused.functions, "the fused step must be inlined (no local functions)"
    for node in g.node:
        assert all(a.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute), node

    # --- loop body: (iter, cond, x) -> (cond, x_prev), reading timesteps/noise from the outer scope
    body_nodes = [
        helper.make_node("Constant", [], ["body/zero1"], value=helper.make_tensor("", TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], ["body/one1"], value=helper.make_tensor("", TensorProto.INT64, [1], [1])),
        helper.make_node("Shape", ["step/x_t"], ["body/x_shape"]),
        helper.make_node("Slice", ["body/x_shape", "body/zero1", "body/one1"], ["body/batch"]),  # (1,) = [B]
        helper.make_node("Gather", ["timesteps", "iter"], ["body/t_scalar"]),
        helper.make_node("Gather", ["timesteps_prev", "iter"], ["body/t_prev_scalar"]),
        helper.make_node("Expand", ["body/t_scalar", "body/batch"], ["step/t"]),  # (B,)
        helper.make_node("Expand", ["body/t_prev_scalar", "body/batch"], ["step/t_prev"]),  # (B,)
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    if stochastic:
        body_nodes += [
            helper.make_node("Gather", ["noise", "iter"], ["step/noise"], axis=0),  # (B, C, H, W)
            helper.make_node("Identity", ["eta"], ["step/eta"]),
        ]
    for node in g.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = _rename(node.name)
        new.input[:] = [_rename(n) for n in node.input]
        new.output[:] = [_rename(n) for n in node.output]
        body_nodes.append(new)
    body = helper.make_graph(
        body_nodes,
        "ddim_body",
        inputs=[
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("step/x_t", TensorProto.FLOAT, None),
        ],
        outputs=[
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("step/x_prev", TensorProto.FLOAT, None),
        ],
    )

    # --- outer graph: trip count and the shifted timestep list, then the Loop
    weights = []
    for init in g.initializer:  # the network's weights live once, in the outer scope
        w = onnx.TensorProto()
        w.CopyFrom(init)
        w.name = _rename(init.name)
        weights.append(w)
    consts = [
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("int64_max", TensorProto.INT64, [1], [2**63 - 1]),
        helper.make_tensor("last_prev", TensorProto.INT64, [1], [-1]),  # t_prev < 0: alpha-bar_prev = 1
        helper.make_tensor("true", TensorProto.BOOL, [], [True]),
    ]
    nodes = [
        helper.make_node("Shape", ["timesteps"], ["num_steps_1"]),
        helper.make_node("Squeeze", ["num_steps_1"], ["num_steps"]),
        helper.make_node("Slice", ["timesteps", "one", "int64_max"], ["timesteps_tail"]),
        helper.make_node("Concat", ["timesteps_tail", "last_prev"], ["timesteps_prev"], axis=0),
        helper.make_node("Loop", ["num_steps", "true", "x_T"], ["x_0"], body=body),
    ]
    x_in = next(i for i in g.input if i.name == "x_t")
    dims = [d.dim_param or d.dim_value for d in x_in.type.tensor_type.shape.dim]  # [batch, C, height, width]
    inputs = [
        helper.make_tensor_value_info("x_T", TensorProto.FLOAT, dims),
        helper.make_tensor_value_info("timesteps", TensorProto.INT64, ["steps"]),
    ]
    if stochastic:
        inputs += [
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["steps", *dims]),
            helper.make_tensor_value_info("eta", TensorProto.FLOAT, []),
        ]
    graph = helper.make_graph(
        nodes, "ddim_sampler", inputs, [helper.make_tensor_value_info("x_0", TensorProto.FLOAT, dims)],
        initializer=weights + consts,
    )
    model = helper.make_model(graph, opset_imports=list(fused.opset_import), ir_version=fused.ir_version)
    model.producer_name = "diffzoo"
    return model
