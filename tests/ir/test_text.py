"""The IR's text form (compiler/ir/text.py): printing and parsing round-trip on hand-written and
imported graphs, and the parser's errors name the line."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.ir import IRError, structural_diff
from compiler.ir.text import parse_graph, print_graph
from tests.conftest import imported

TEXT = """
input  x: float32[B, S, 64]
param  w: float32[64, 64]
param  b: float32[64]
const  two: float32[] = [2.0]
mm = MatMul(x, w)
y = Add(mm, b)
z = Mul(y, two)
t = Transpose(z) {perm: [0, 2, 1]} : float32[B, 64, S]
a, c = Split(z) {axis: -1, num_outputs: 2} : float32[B, S, 32], float32[B, S, 32]
output t
output a
"""


def test_parse_builds_the_graph_it_says():
    g = parse_graph(TEXT)
    assert g.inputs == ["x"] and g.outputs == ["t", "a"]
    assert set(g.params) == {"w", "b", "two"} and g.params["two"].annotations == {"const": True}
    assert g.params["two"].data.tolist() == 2.0 and g.params["w"].data is None
    assert g.ops_by_kind() == {"Add": 1, "MatMul": 1, "Mul": 1, "Split": 1, "Transpose": 1}
    assert str(g.type("y")) == "float32[B, S, 64]"           # typed by the registry's shape rule
    assert g.producer_of("t").attrs == {"perm": [0, 2, 1]}


def test_print_then_parse_is_the_same_graph():
    g = parse_graph(TEXT)
    assert structural_diff(parse_graph(print_graph(g)), g) is None
    assert print_graph(parse_graph(print_graph(g))) == print_graph(g)     # a fixed point


@pytest.mark.parametrize("model", ["llama_tiny", "gpt2_tiny"])
def test_round_trip_of_an_imported_model(model):
    """A whole imported decoder (KV cache lifted, fused by the import passes) survives the text
    form: the same ops, attributes, types and wiring (weights printed without their data)."""
    g = imported(model).copy()
    for p in g.params.values():
        if p.data is not None and p.data.size > 16:
            p.data = None
    back = parse_graph(print_graph(g))
    assert structural_diff(back, g) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["Relu", "Exp", "Neg", "Sigmoid", "Tanh", "Abs"]), min_size=1, max_size=8),
       st.integers(1, 64))
def test_round_trip_of_generated_chains(ops, width):
    lines = [f"input  x: float32[B, {width}]"]
    prev = "x"
    for i, op in enumerate(ops):
        lines.append(f"t{i} = {op}({prev})")
        prev = f"t{i}"
    lines.append(f"output {prev}")
    g = parse_graph("\n".join(lines))
    assert [n.op for n in g.topo_order()] == ops
    assert structural_diff(parse_graph(print_graph(g)), g) is None


@pytest.mark.parametrize("bad, says", [
    ("input x float32[B]", "not a tensor type"),
    ("y <- Relu(x)", "not a declaration"),
    ("input x: floaty[B]", "unknown dtype"),
    ("input x: float32[B]\ny = Relu(nope)\noutput y", "undefined tensor 'nope'"),
    ("input x: float32[B]\ny = Frobnicate(x)\noutput y", "Frobnicate"),
    ("input x: float32[B]\ny = Softmax(x) {axis -1}\noutput y", "key: value"),
])
def test_parse_errors_name_the_line(bad, says):
    with pytest.raises(Exception) as e:
        parse_graph(bad)
    assert says in str(e.value) and ("line" in str(e.value) or isinstance(e.value, IRError))


def test_param_data_round_trips_exactly():
    g = parse_graph("input x: float32[B, 3]\nparam w: float32[3] = [0.5, -1.25, 3.0]\ny = Mul(x, w)\noutput y")
    np.testing.assert_array_equal(g.params["w"].data, np.array([0.5, -1.25, 3.0], np.float32))
    assert "= [0.5, -1.25, 3.0]" in print_graph(g)
