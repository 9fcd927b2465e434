"""A small ONNX graph writer: named nodes, initializers and cached constants, nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"  # ONNX Runtime's contrib-op domain
OPSET = 21


@dataclass
class Graph:
    """Nodes and initializers in the order they are added; `op` returns the node's output names."""

    name: str
    nodes: list = field(default_factory=list)
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    _constants: dict = field(default_factory=dict)
    _by_content: dict = field(default_factory=dict)
    _count: int = 0

    def unique(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int | list[str] = 1, domain: str = "",
           **attrs) -> list[str]:
        """Add a node called `name`; `outputs` is a count (named `name/output_i`) or a list of names."""
        names = [f"{name}/output_{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, domain=domain or None, **attrs))
        return names

    def one(self, op_type: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        """`op` for a node with a single output."""
        return self.op(op_type, inputs, name, 1, domain, **attrs)[0]

    def weight(self, name: str, array: np.ndarray) -> str:
        """Add an initializer (names must be unique); returns its name."""
        if name in self.initializers:
            raise ValueError(f"initializer {name} added twice")
        array = array if array.flags.c_contiguous else np.ascontiguousarray(array)  # keeps 0-d scalars
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def shared(self, name: str, array: np.ndarray) -> str:
        """An initializer that is stored once however many traced modules hold the same tensor (a
        head that shares the embedding's factors traces them again)."""
        import hashlib

        key = (array.dtype.str, array.shape, hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest())
        if key not in self._by_content:
            self._by_content[key] = self.weight(name, array)
        return self._by_content[key]

    def const(self, values, dtype=np.int64) -> str:
        """A small constant initializer, shared between every node that asks for the same value."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.weight(f"const/{array.dtype.name}/{len(self._constants)}", array)
        return self._constants[key]

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def model(self, metadata: dict[str, str]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, list(self.initializers.values()))
        domains = {node.domain for node in self.nodes if node.domain}
        opsets = [helper.make_opsetid("", OPSET), *[helper.make_opsetid(d, 1) for d in sorted(domains)]]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="tensoredge")
        model.ir_version = 10
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=str(value))
        return model


def onnx_type(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


INT64, INT32, FLOAT = TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT
