"""A whole sampler as one ONNX graph: an ONNX ``Loop`` whose body is a fused step graph.

Built by graph surgery on the exported fused step (not by scripting a Python loop), so the body is
exactly the verified fused-step graph and the number of steps is the length of the ``timesteps``
input, chosen at run time. Noise, when used, is an input (S, B, C, H, W): nothing is drawn inside.
Works for either solver: DDIM's step carries x alone, DPM-Solver++(2M)'s carries x and its
previous x0 prediction (``x0_last``, zeros before the first step) and reads the previous timestep.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from zoo.diffusion import NO_STEP

__all__ = ["build_sampler_graph"]

_PREFIX = "step/"


def _rename(name: str) -> str:
    return _PREFIX + name if name else name  # "" marks an omitted optional input


# The fused steps' signatures this builder knows: DDIM (x alone) and DPM-Solver++(2M) (x and x0_last).
_SIGNATURES = {
    False: (["x_t", "t", "t_prev"], ["x_prev"]),
    True: (["x_t", "x0_last", "t", "t_prev", "t_last"], ["x_prev", "x0"]),
}
_GUIDED = ("labels", "guidance")  # a class-conditional model's fused step takes these next: the same on every step


def build_sampler_graph(fused: onnx.ModelProto, stochastic: bool) -> onnx.ModelProto:
    """Wrap a fused step into a sampler mapping ``(x_T, timesteps[, noise, eta]) -> x_0``.

    The fused step is ``(x_t, t, t_prev[, noise, eta]) -> x_prev`` (DDIM) or ``(x_t, x0_last, t,
    t_prev, t_last) -> (x_prev, x0)`` (DPM-Solver++(2M)); ``timesteps`` is the descending int64
    list of the run (S,), and ``noise`` has shape (S, B, C, H, W) for the stochastic variant.
    """
    multistep, guided = _check_fused(fused, stochastic)
    body, dims = _loop_body(fused.graph, multistep, stochastic, guided)
    return _sampler(fused, body, dims, multistep, stochastic, guided)


def _check_fused(fused: onnx.ModelProto, stochastic: bool) -> tuple[bool, bool]:
    """Refuse anything but a flat fused step graph; (multistep: the DPM-Solver++ signature, guided: labels and guidance)."""
    g = fused.graph
    got, outs = [i.name for i in g.input], [o.name for o in g.output]
    multistep, guided = "x0_last" in got, "labels" in got
    expected, expected_out = _SIGNATURES[multistep]
    expected = expected + (list(_GUIDED) if guided else []) + (["noise", "eta"] if stochastic else [])
    if got != expected or outs != expected_out:
        raise ValueError(f"not a fused step graph: inputs {got}, outputs {outs}; expected {expected} -> {expected_out}")
    if fused.functions:
        raise ValueError("the fused step must be inlined (no local functions)")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for node in g.node for a in node.attribute):
        raise ValueError("the fused step must not hold subgraphs")
    return multistep, guided


def _loop_body(g: onnx.GraphProto, multistep: bool, stochastic: bool, guided: bool = False) -> tuple[onnx.GraphProto, list]:
    """The Loop body: (iter, cond, x[, x0]) -> (cond, x_prev[, x0]), the step's nodes renamed into it,
    reading ``timesteps``, ``timesteps_prev`` (and ``timesteps_last``, ``noise``, ``eta``) from the outer scope."""
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
    if multistep:
        body_nodes += [
            helper.make_node("Gather", ["timesteps_last", "iter"], ["body/t_last_scalar"]),
            helper.make_node("Expand", ["body/t_last_scalar", "body/batch"], ["step/t_last"]),  # (B,)
        ]
    if stochastic:
        body_nodes += [
            helper.make_node("Gather", ["noise", "iter"], ["step/noise"], axis=0),  # (B, C, H, W)
            helper.make_node("Identity", ["eta"], ["step/eta"]),
        ]
    if guided:  # per-image labels and guidance, read from the outer scope on every step
        body_nodes += [helper.make_node("Identity", [name], [f"step/{name}"]) for name in _GUIDED]
    for node in g.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = _rename(node.name)
        new.input[:] = [_rename(n) for n in node.input]
        new.output[:] = [_rename(n) for n in node.output]
        body_nodes.append(new)
    x_in = next(i for i in g.input if i.name == "x_t")
    dims = [d.dim_param or d.dim_value for d in x_in.type.tensor_type.shape.dim]  # [batch, C, height, width]
    carried_in = ["step/x_t"] + (["step/x0_last"] if multistep else [])
    carried_out = ["step/x_prev"] + (["step/x0"] if multistep else [])
    body = helper.make_graph(
        body_nodes,
        "sampler_body",
        inputs=[helper.make_tensor_value_info("iter", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in carried_in],
        outputs=[helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in carried_out],
    )
    return body, dims


def _sampler(fused: onnx.ModelProto, body: onnx.GraphProto, dims: list, multistep: bool, stochastic: bool,
             guided: bool = False) -> onnx.ModelProto:
    """The outer graph: trip count and the shifted timestep lists, then the Loop; the weights live here, once."""
    g = fused.graph
    weights = []
    for init in g.initializer:  # the network's weights live once, in the outer scope
        w = onnx.TensorProto()
        w.CopyFrom(init)
        w.name = _rename(init.name)
        weights.append(w)
    consts = [
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("int64_max", TensorProto.INT64, [1], [2**63 - 1]),
        helper.make_tensor("last_prev", TensorProto.INT64, [1], [NO_STEP]),  # no step there (zoo.solvers.alpha_bars)
        helper.make_tensor("true", TensorProto.BOOL, [], [True]),
    ]
    nodes = [
        helper.make_node("Shape", ["timesteps"], ["num_steps_1"]),
        helper.make_node("Squeeze", ["num_steps_1"], ["num_steps"]),
        helper.make_node("Slice", ["timesteps", "one", "int64_max"], ["timesteps_tail"]),
        helper.make_node("Concat", ["timesteps_tail", "last_prev"], ["timesteps_prev"], axis=0),
    ]
    if multistep:  # timesteps_last = [-1, t_0, ..., t_{S-2}]; x0_last starts at zeros (unused on step 0)
        nodes += [
            helper.make_node("Sub", ["num_steps_1", "one"], ["num_steps_m1"]),
            helper.make_node("Slice", ["timesteps", "zero", "num_steps_m1"], ["timesteps_head"]),
            helper.make_node("Concat", ["last_prev", "timesteps_head"], ["timesteps_last"], axis=0),
            helper.make_node("Mul", ["x_T", "zero_f"], ["x0_init"]),
            helper.make_node("Loop", ["num_steps", "true", "x_T", "x0_init"], ["x_0", "x0_final"], body=body),
        ]
        consts += [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
                   helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0])]
    else:
        nodes.append(helper.make_node("Loop", ["num_steps", "true", "x_T"], ["x_0"], body=body))
    inputs = [
        helper.make_tensor_value_info("x_T", TensorProto.FLOAT, dims),
        helper.make_tensor_value_info("timesteps", TensorProto.INT64, ["steps"]),
    ]
    if guided:
        inputs += [helper.make_tensor_value_info("labels", TensorProto.INT64, [dims[0]]),
                   helper.make_tensor_value_info("guidance", TensorProto.FLOAT, [dims[0]])]
    if stochastic:
        inputs += [
            helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["steps", *dims]),
            helper.make_tensor_value_info("eta", TensorProto.FLOAT, []),
        ]
    graph = helper.make_graph(
        nodes, "dpmpp_sampler" if multistep else "ddim_sampler", inputs, [helper.make_tensor_value_info("x_0", TensorProto.FLOAT, dims)],
        initializer=weights + consts,
    )
    model = helper.make_model(graph, opset_imports=list(fused.opset_import), ir_version=fused.ir_version)
    model.producer_name = "diffzoo"
    return model


def loop_is_bounded(sampler: onnx.ModelProto) -> bool:
    """True if a whole-loop graph runs exactly len(timesteps) steps, as ``build_sampler_graph`` builds it.

    Its top graph has one ``Loop`` whose trip count is ``Squeeze(Shape(timesteps))``: a graph that
    passed its hash but loops on a constant (or a value of its own) could run without end.
    """
    g = sampler.graph
    loops = [n for n in g.node if n.op_type == "Loop"]
    producer = {out: n for n in g.node for out in n.output}
    if len(loops) != 1 or not loops[0].input:
        return False
    squeeze = producer.get(loops[0].input[0])
    shape = producer.get(squeeze.input[0]) if squeeze is not None and squeeze.op_type == "Squeeze" and squeeze.input else None
    return shape is not None and shape.op_type == "Shape" and list(shape.input) == ["timesteps"]

