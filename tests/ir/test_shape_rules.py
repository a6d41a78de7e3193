"""The registry's shape rules give the output dtype ONNX's own shape inference gives (the
operator schemas shipped with the onnx package), for every elementwise unary op and comparison
the registry declares: a wrong dtype (IsNaN typed float instead of bool) would cost and emit the
op's consumers wrongly."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from compiler.ir import Graph, TensorType
from compiler.ir import ops as registry
from compiler.ir.tensors import ONNX_TO_DTYPE

OPSET = 23
# standard ONNX ops only (rooftop-domain ones such as Swish have no ONNX schema at this opset)
CASES = [(op, n) for op, n in [(op, 1) for op in sorted(registry._EW_UNARY)] + [(op, 2) for op in registry._CMP]
         if onnx.defs.has(op, max_inclusive_version=OPSET)]
BOOL_OPERANDS = {"Not"}


def _onnx_dtype(op: str, arity: int) -> str:
    ins = [f"x{i}" for i in range(arity)]
    elem = TensorProto.BOOL if op in BOOL_OPERANDS else TensorProto.FLOAT
    node = helper.make_node(op, ins, ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(x, elem, [2, 3]) for x in ins],
                              [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return ONNX_TO_DTYPE[inferred.graph.output[0].type.tensor_type.elem_type]


@pytest.mark.parametrize("op,arity", CASES, ids=[c[0] for c in CASES])
def test_registry_dtype_matches_onnx_shape_inference(op, arity):
    want = _onnx_dtype(op, arity)
    g = Graph("g")
    for i in range(arity):
        g.add_input(f"x{i}", TensorType("bool" if op in BOOL_OPERANDS else "float32", (2, 3)))
    node = g.add_op(op, [f"x{i}" for i in range(arity)], 1, {})
    assert g.type(node.outputs[0]).dtype == want, (op, g.type(node.outputs[0]), want)
