"""Graph-level facts and checks of an exported ONNX model: weight bytes and elements, op counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from toolkit.errors import TensoredgeError

WEIGHT_SLACK = 1.01  # graph weights may exceed the model's by 1% (small constants) before we refuse
SCALES = (".scales", ".zero_points")  # block-quantization scales and zero points: bookkeeping, not weights


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


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def graph_weight_elements(model_proto: ModelProto) -> int:
    """Elements of every weight tensor, scales and zero points left out. Block-quantized codes count the K x N
    weights they hold, not the padding of a last partial block: MatMulNBits says K and N; a
    gathered table that MatMulNBits does not also read is unpadded by the Slice that follows it."""
    graph = model_proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def source(name: str) -> str:
        while name in producer and producer[name].op_type == "Reshape":
            name = producer[name].input[0]
        return name

    logical = {}
    for node in graph.node:
        if node.op_type == "GatherBlockQuantized":
            attrs, codes = _attrs(node), source(node.input[0])
            n, row_bytes = inits[codes].dims[0], int(np.prod(inits[codes].dims[1:]))
            k = row_bytes * 8 // attrs["bits"]
            for reader in consumers.get(node.output[0], []):
                if reader.op_type == "Slice" and reader.input[2] in inits:
                    k = min(k, int(numpy_helper.to_array(inits[reader.input[2]]).reshape(-1)[0]))
            logical.setdefault(codes, n * k)
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = _attrs(node)
            logical[source(node.input[1])] = attrs["K"] * attrs["N"]
    return sum(logical.get(t.name, int(np.prod(t.dims))) for t in weight_tensors(model_proto)
               if not t.name.endswith(SCALES))


def check_elements_kept(model_proto: ModelProto, param_count: int) -> int:
    """Refuse a graph holding more weight elements than the model has parameters: factors were
    multiplied back into dense weights somewhere."""
    elements = graph_weight_elements(model_proto)
    if elements > param_count * WEIGHT_SLACK:
        raise TensoredgeError(
            f"ONNX graph holds {elements:,} weight elements but the model has {param_count:,} parameters: "
            "factors were re-densified; this is a bug in the exporter, please report it"
        )
    return elements


def op_counts(model_proto: ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph has, most frequent first."""
    return dict(Counter(node.op_type for node in model_proto.graph.node).most_common())
