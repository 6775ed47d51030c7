"""A whole sampler as one ONNX graph: an ONNX ``Loop`` whose body is a fused step graph.

Built by graph surgery on the exported fused step (not by scripting a Python loop), so the body is
exactly the verified fused-step graph (less the nodes that depend on its weights alone, which run once
before the Loop) and the number of steps is the length of the ``timesteps``
input, chosen at run time. Noise, when used, is an input (S, B, C, H, W): nothing is drawn inside.
Works for every solver of the table (``zoo.solvers``) from its row: DDIM's step carries x alone,
DPM-Solver++(2M)'s carries x and its previous x0 prediction (``x0_last``, zeros before the first
step) and reads the previous timestep, UniPC's carries three tensors and reads two earlier timesteps,
Euler ancestral's takes noise on every step.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from export.format.artifacts import ArtifactSpec
from zoo.diffusion import NO_STEP
from zoo.solvers import EARLIER, Solver, get_solver

__all__ = ["build_sampler_graph"]

_PREFIX = "step/"


def _rename(name: str) -> str:
    return _PREFIX + name if name else name  # "" marks an omitted optional input


def build_sampler_graph(fused: onnx.ModelProto, spec: ArtifactSpec) -> onnx.ModelProto:
    """Wrap the fused step of ``spec`` (a whole-loop artifact of the table) into ``(x_T, timesteps, *conditioning[,
    noise, eta]) -> x_0``.

    The fused step's inputs are the artifact table's (``export.format.artifacts``), each found by
    its name: x and the solver's state (carried by the Loop, the state from zeros), ``t``, ``t_prev``
    and the earlier timesteps the solver reads (sliced from ``timesteps``, the descending int64 list
    of the run, (S,)), the conditioning the table declares (``spec.conditioning``: the same on every
    step, taken from the outer scope as it is), and its noise inputs (``noise`` (S, B, C, H, W)
    gathered per step; ``eta`` as it is).
    """
    if spec.kind != "sampler":
        raise ValueError(f"{spec.name!r} is a {spec.kind} artifact, not a whole-loop graph")
    row = get_solver(spec.solver)
    names = _check_fused(fused, row, spec.stochastic, list(spec.conditioning))
    invariant = _loop_invariant(fused.graph)
    hoisted = {id(n) for n in invariant}
    body, dims = _loop_body([n for n in fused.graph.node if id(n) not in hoisted], fused.graph, names)
    return _sampler(fused, body, dims, row, names, invariant)


def _loop_invariant(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The step's nodes computed from its initializers alone (a stored weight's ``Transpose``, ``export.format.graphs``),
    in order: they run once, in the outer graph, instead of on every step."""
    known = {init.name for init in g.initializer}
    invariant = []
    for node in g.node:
        if all(n in known for n in node.input if n):
            invariant.append(node)
            known.update(node.output)
    return invariant


def _check_fused(fused: onnx.ModelProto, row: Solver, stochastic: bool, conditioning: list[str]) -> dict[str, list[str]]:
    """Refuse anything but a flat fused step graph of ``row`` with the table's inputs; its inputs by role (carried,
    timesteps, passed, noise)."""
    g = fused.graph
    got, outs = [i.name for i in g.input], [o.name for o in g.output]
    carried = ["x_t", *(i for i, _ in row.state)]
    times = list(row.timestep_inputs)
    noise = list(row.noise_inputs(stochastic))
    expected, expected_out = carried + times + conditioning + noise, ["x_prev", *(o for _, o in row.state)]
    if got != expected or outs != expected_out:
        raise ValueError(f"not a fused step graph of {row.name!r}: inputs {got}, outputs {outs}; expected "
                         f"{expected} -> {expected_out}")
    if fused.functions:
        raise ValueError("the fused step must be inlined (no local functions)")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for node in g.node for a in node.attribute):
        raise ValueError("the fused step must not hold subgraphs")
    return {"carried": carried, "times": times, "passed": conditioning + [n for n in noise if n != "noise"],
            "noise": [n for n in noise if n == "noise"], "outputs": expected_out}


def _renamed(node: onnx.NodeProto) -> onnx.NodeProto:
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.name = _rename(node.name)
    new.input[:] = [_rename(n) for n in node.input]
    new.output[:] = [_rename(n) for n in node.output]
    return new


def _loop_body(nodes: list[onnx.NodeProto], g: onnx.GraphProto, names: dict[str, list[str]]) -> tuple[onnx.GraphProto, list]:
    """The Loop body: (iter, cond, x, *state) -> (cond, x_prev, *state'), the step's nodes renamed into it, reading
    the list of each timestep input (``_times``), ``noise`` and the passed inputs from the outer scope."""
    body_nodes = [
        helper.make_node("Constant", [], ["body/zero1"], value=helper.make_tensor("", TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], ["body/one1"], value=helper.make_tensor("", TensorProto.INT64, [1], [1])),
        helper.make_node("Shape", ["step/x_t"], ["body/x_shape"]),
        helper.make_node("Slice", ["body/x_shape", "body/zero1", "body/one1"], ["body/batch"]),  # (1,) = [B]
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    for name in names["times"]:  # t, t_prev, t_last: this step's entry of each list, one per image (B,)
        body_nodes += [helper.make_node("Gather", [_times(name), "iter"], [f"body/{name}_scalar"]),
                       helper.make_node("Expand", [f"body/{name}_scalar", "body/batch"], [f"step/{name}"])]
    body_nodes += [helper.make_node("Gather", ["noise", "iter"], ["step/noise"], axis=0) for _ in names["noise"]]
    body_nodes += [helper.make_node("Identity", [name], [f"step/{name}"]) for name in names["passed"]]
    body_nodes += [_renamed(node) for node in nodes]
    x_in = next(i for i in g.input if i.name == "x_t")
    dims = [d.dim_param or d.dim_value for d in x_in.type.tensor_type.shape.dim]  # [batch, C, height, width]
    body = helper.make_graph(
        body_nodes,
        "sampler_body",
        inputs=[helper.make_tensor_value_info("iter", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(_rename(n), TensorProto.FLOAT, dims) for n in names["carried"]],
        outputs=[helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(_rename(n), TensorProto.FLOAT, dims) for n in names["outputs"]],
    )
    return body, dims


def _times(name: str) -> str:
    """The outer list a timestep input is read from: ``timesteps`` for t, ``timesteps_prev`` for t_prev, ..."""
    return "timesteps" if name == "t" else "timesteps_" + name.removeprefix("t_")


def _sampler(fused: onnx.ModelProto, body: onnx.GraphProto, dims: list, row: Solver,
             names: dict[str, list[str]], invariant: list[onnx.NodeProto]) -> onnx.ModelProto:
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
    if row.earlier:  # only what the graph uses: onnxruntime warns of every unused initializer
        consts.append(helper.make_tensor("zero", TensorProto.INT64, [1], [0]))
    if row.state:
        consts.append(helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0]))
    nodes = [_renamed(node) for node in invariant] + [
        helper.make_node("Shape", ["timesteps"], ["num_steps_1"]),
        helper.make_node("Squeeze", ["num_steps_1"], ["num_steps"]),
        # timesteps_prev = [t_1, ..., t_{S-1}, -1]: where each step goes (none after the last)
        helper.make_node("Slice", ["timesteps", "one", "int64_max"], ["timesteps_tail"]),
        helper.make_node("Concat", ["timesteps_tail", "last_prev"], ["timesteps_prev"], axis=0),
    ]
    for k, w in enumerate(EARLIER[: row.earlier], start=1):  # timesteps_<w> = [-1] * k + timesteps, cut to S
        nodes += [
            helper.make_node("Concat", ["last_prev"] * k + ["timesteps"], [f"timesteps_{w}_padded"], axis=0),
            helper.make_node("Slice", [f"timesteps_{w}_padded", "zero", "num_steps_1"], [f"timesteps_{w}"]),
        ]
    state = [f"{name}_init" for name in names["carried"][1:]]
    nodes += [helper.make_node("Mul", ["x_T", "zero_f"], [s]) for s in state]  # the state starts at zeros
    nodes.append(helper.make_node("Loop", ["num_steps", "true", "x_T", *state], ["x_0", *(f"{s}_final" for s in state)],
                                  body=body))
    step_inputs = {i.name: i for i in g.input}
    inputs = [helper.make_tensor_value_info("x_T", TensorProto.FLOAT, dims),
              helper.make_tensor_value_info("timesteps", TensorProto.INT64, ["steps"])]
    inputs += [step_inputs[n] for n in names["passed"] if n != "eta"]  # the conditioning, as the step declares it
    inputs += [helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["steps", *dims]) for _ in names["noise"]]
    inputs += [step_inputs[n] for n in names["passed"] if n == "eta"]
    graph = helper.make_graph(nodes, f"{row.name}_sampler", inputs,
                              [helper.make_tensor_value_info("x_0", TensorProto.FLOAT, dims)], initializer=weights + consts)
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

