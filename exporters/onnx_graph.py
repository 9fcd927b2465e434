"""Graph-level checks and exact rewrites of an exported ONNX model: weight bytes, weight transposes."""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from toolkit.errors import TensoredgeError

WEIGHT_SLACK = 1.01  # graph weights may exceed the model's by 1% (small constants) before we refuse
QUANT_PARAMS = ("_scale", "_scales", "_zero_point")  # what onnxruntime.quantization adds beside each weight


def weight_tensors(model_proto: ModelProto) -> list:
    """Every initializer and Constant-node tensor of the graph."""
    tensors = list(model_proto.graph.initializer)
    for node in model_proto.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    return tensors


def graph_weight_bytes(model_proto: ModelProto) -> int:
    """Bytes of every initializer and Constant tensor in the graph."""
    return sum(numpy_helper.to_array(t).nbytes for t in weight_tensors(model_proto))


def graph_weight_elements(model_proto: ModelProto) -> int:
    """Elements of every weight tensor, leaving out quantization scales and zero points. A
    MatMulNBits weight counts its K x N elements: its blocks pad K to a multiple of the block size."""
    logical = {}
    for node in model_proto.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            logical[node.input[1]] = attrs["K"] * attrs["N"]
    return sum(logical.get(t.name, int(np.prod(t.dims))) for t in weight_tensors(model_proto)
               if not t.name.endswith(QUANT_PARAMS))


def check_factors_kept(model_proto: ModelProto, param_bytes: int) -> int:
    """Refuse an fp32 graph whose weights outweigh the model's parameters (re-densified factors)."""
    weights = graph_weight_bytes(model_proto)
    if weights > param_bytes * WEIGHT_SLACK:
        raise TensoredgeError(
            f"ONNX graph holds {weights:,} bytes of weights but the model has {param_bytes:,}: "
            "factors were re-densified (constant folding?); export without graph optimisation"
        )
    return weights


def check_elements_kept(model_proto: ModelProto, param_count: int) -> int:
    """The same check for any precision: weight elements (not bytes) against the parameter count."""
    elements = graph_weight_elements(model_proto)
    if elements > param_count * WEIGHT_SLACK:
        raise TensoredgeError(
            f"ONNX graph holds {elements:,} weight elements but the model has {param_count:,} parameters: "
            "factors were re-densified by a graph rewrite; export without graph optimisation"
        )
    return elements


def fold_weight_transposes(model_proto: ModelProto) -> int:
    """Store 2-D weights that the graph transposes (Transpose(W) -> MatMul) already transposed.

    torch.onnx writes `x @ W.T` as MatMul(x, Transpose(W)); onnxruntime.quantization only quantizes
    a MatMul whose weight is an initializer, so every linear would stay fp32. Exact and size-neutral:
    a weight also read by Gather (a tied embedding) is gathered along the other axis instead of
    being stored twice. Returns how many weights were folded.
    """
    graph = model_proto.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = 0
    for name, tensor in inits.items():
        users = consumers.get(name, [])
        transposes = [n for n in users if n.op_type == "Transpose" and _perm(n) in (None, [1, 0])]
        gathers = [n for n in users if n.op_type == "Gather" and n.input[0] == name and _axis(n) == 0]
        if len(tensor.dims) != 2 or not transposes or len(transposes) + len(gathers) != len(users):
            continue
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(tensor).T), name))
        for info in [v for v in graph.value_info if v.name == name]:  # its recorded shape is now wrong
            graph.value_info.remove(info)
        for t in transposes:  # readers of the transpose now read the weight itself
            for reader in consumers.get(t.output[0], []):
                reader.input[:] = [name if i == t.output[0] else i for i in reader.input]
            for out in graph.output:
                if out.name == t.output[0]:
                    raise TensoredgeError("a transposed weight is a graph output: cannot fold it")
            graph.node.remove(t)
        for g in gathers:  # rows of W are columns of W.T: gather along axis 1, move that axis last
            _gather_columns(graph, g)
        folded += 1
    return folded


def _perm(node) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _gather_columns(graph, gather) -> None:
    """Gather(W, ids) -> Transpose(Gather(W.T, ids, axis=1)), the gathered axis moved last."""
    rank = _rank_of(graph, gather.input[1])
    out = gather.output[0]
    columns = f"{out}_columns"
    for a in list(gather.attribute):
        if a.name == "axis":
            gather.attribute.remove(a)
    gather.attribute.append(helper.make_attribute("axis", 1))
    gather.output[0] = columns
    index = list(graph.node).index(gather)
    graph.node.insert(index + 1, helper.make_node("Transpose", [columns], [out], perm=[*range(1, rank + 1), 0],
                                                  name=f"{gather.name}_to_rows"))


def _rank_of(graph, name: str) -> int:
    """The rank of `name` from the graph's inputs or value_info (the exporter writes both)."""
    for info in (*graph.input, *graph.value_info):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    raise TensoredgeError(f"cannot tell the rank of {name} while folding a weight transpose: re-export")
