"""The tests' one graph-building helper and the onnxruntime helpers that check a rewrite
numerically (fp32: max |before − after| ≤ 1e-4)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from compiler.backend.emit import check, to_model
from compiler.ir import DTYPES, Graph, TensorType

RTOL_ATOL = 1e-4



class Builder:
    """The one graph builder of the tests: ``b.input("x", B, S, 8)`` (or a shape tuple),
    ``b.const(1.0)``, ``b.weight(8, 8)`` (seeded random) or ``b.param(array)``,
    ``b.op("Relu", x, name=..., **attrs)``, ``b.out(y)`` → the verified :class:`Graph`. Static
    shapes emit and run in onnxruntime as they are; for Before / Expected tests written as text
    see :func:`compiler.ir.text.parse_graph`."""

    def __init__(self, seed: int = 0):
        self.g = Graph("t")
        self.rng = np.random.default_rng(seed)

    def input(self, name, *shape, dtype="float32"):
        """``input("x", B, S, 8)`` or ``input("x", (2, 5, 16))`` / ``input("m", (2, 6), "bool")``."""
        if shape and isinstance(shape[0], (list, tuple)):
            if len(shape) > 1:
                dtype = shape[1]
            shape = tuple(shape[0])
        return self.g.add_input(name, TensorType(dtype, tuple(shape)))

    def param(self, arr, dtype="float32"):
        arr = np.asarray(arr, DTYPES[dtype][1])
        return self.g.add_param(self.g.fresh("w"), TensorType(dtype, arr.shape), arr)

    def const(self, value, dtype="float32"):
        arr = np.asarray(value, DTYPES[dtype][1])
        return self.g.add_param(self.g.fresh("c"), TensorType(dtype, arr.shape), arr, const=True)

    def weight(self, *shape, scale=0.3, dtype="float32"):
        arr = (self.rng.standard_normal(shape) * scale).astype(DTYPES[dtype][1])
        return self.g.add_param(self.g.fresh("w"), TensorType(dtype, shape), arr)

    def op(self, op, *ins, n_out=1, types=None, name=None, **attrs):
        node = self.g.add_op(op, list(ins), n_out, attrs, types=types, name=name)
        return node.outputs[0] if n_out == 1 else list(node.outputs)

    def out(self, *ts):
        self.g.set_outputs(list(ts))
        self.g.verify()
        return self.g


def ops_of(g: Graph) -> dict[str, int]:
    return g.ops_by_kind()


def feeds_for(g: Graph, seed: int = 0, values: dict | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in g.inputs:
        ty = g.type(t)
        shape = [int(d) for d in ty.shape]
        if values and t in values:
            feeds[t] = values[t]
        elif ty.dtype in ("int64", "int32"):
            feeds[t] = rng.integers(0, 2, shape).astype(DTYPES[ty.dtype][1])
        elif ty.dtype == "bool":
            feeds[t] = rng.random(shape) > 0.3
        else:
            feeds[t] = rng.standard_normal(shape).astype(DTYPES[ty.dtype][1])
    return feeds


def ort_session(model_or_graph):
    model = model_or_graph
    if isinstance(model_or_graph, Graph):
        model = to_model(model_or_graph)
        check(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run_ort(model_or_graph, feeds) -> list[np.ndarray]:
    """Run in onnxruntime. A decoder with a KV cache also takes ``attention_mask`` [B, P+S] (padding);
    a caller that does not give one feeds no padding: all ones over the past and the new tokens."""
    sess = ort_session(model_or_graph)
    names = {i.name for i in sess.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    if "attention_mask" in names and "attention_mask" not in feeds and "input_ids" in feeds:
        b, s = feeds["input_ids"].shape[:2]
        past = feeds["past_key.0"].shape[2] if "past_key.0" in feeds else 0
        feeds["attention_mask"] = np.ones((b, past + s), np.int64)
    return sess.run(None, feeds)


def assert_same_outputs(before, after, feeds, atol=RTOL_ATOL, relative=False):
    """Max abs diff ≤ atol (``relative``: ≤ atol × the output's magnitude when that exceeds 1)."""
    a, b = run_ort(before, feeds), run_ort(after, feeds)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        x, y = x.astype(np.float64), y.astype(np.float64)
        fin = np.isfinite(x)
        assert (fin == np.isfinite(y)).all() and (x[~fin] == y[~fin]).all(), "non-finite values differ"
        x, y = x[fin], y[fin]
        diff = float(np.abs(x - y).max()) if x.size else 0.0
        scale = max(1.0, float(np.abs(x).max())) if relative and x.size else 1.0
        assert diff <= atol * scale, f"max abs diff {diff} (output magnitude {scale:g})"


def causal_mask(s, dtype="float32", fill=-np.inf):
    m = np.triu(np.full((s, s), fill, np.float64), 1)
    return m.astype(DTYPES[dtype][1]).reshape(1, 1, s, s)


def gelu_tanh(bd, x, order=0):
    c = float(np.sqrt(2 / np.pi))
    inner = bd.op("Add", x, bd.op("Mul", bd.const(0.044715), bd.op("Pow", x, bd.const(3.0))))
    t = bd.op("Add", bd.op("Tanh", bd.op("Mul", inner, bd.const(c))), bd.const(1.0))
    if order == 0:
        return bd.op("Mul", bd.op("Mul", x, bd.const(0.5)), t)       # GPT-2: (0.5·x)·(1+tanh)
    return bd.op("Mul", x, bd.op("Mul", bd.const(0.5), t))            # x·(0.5·(1+tanh))


def gelu_erf(bd, x, order=0):
    e = bd.op("Add", bd.op("Erf", bd.op("Div", x, bd.const(float(np.sqrt(2))))), bd.const(1.0))
    if order == 0:
        return bd.op("Mul", bd.op("Mul", x, e), bd.const(0.5))       # legacy BERT: (x·(1+erf))·0.5
    return bd.op("Div", bd.op("Mul", x, e), bd.const(2.0))
