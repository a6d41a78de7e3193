"""Layer stacking (a 2-layer export replicated) costs exactly what a full export costs."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.perf.cost import CostModel
from compiler.perf.hardware import hardware_by_name
from compiler.frontends.models import import_torch
from tests.conftest import model_cfg, prepare


@pytest.mark.parametrize("name", ["llama_tiny", "gpt2_tiny", "mixtral_tiny"])
def test_stacked_import_equals_full_export(name):
    base = model_cfg(name, weights="meta", dtype="float16")
    key = "n_layer" if "n_layer" in base["config"] else "num_hidden_layers"
    base["config"][key] = 5
    full = import_torch(dict(base, stack_layers=False))
    stacked = import_torch(dict(base))
    prepare(full)
    prepare(stacked)
    assert stacked.meta["layer_stacking"] == {"layers": 5, "stacked_from": 2}
    assert "layer_stacking" not in full.meta
    stacked.verify()
    assert stacked.ops_by_kind() == full.ops_by_kind()
    assert sorted(stacked.params) == sorted(full.params)
    assert stacked.inputs == full.inputs and stacked.outputs == full.outputs
    hw = hardware_by_name("h100_sxm")
    cf, cs = CostModel(full, hw), CostModel(stacked, hw)
    for b, s, p, phase in [(4, 300, 0, "prefill"), (16, 1, 2000, "decode")]:
        tf, ts = cf.totals(b, s, p, phase), cs.totals(b, s, p, phase)
        for k in ("time", "flops", "bytes", "kv", "weights"):
            assert ts[k] == pytest.approx(tf[k], rel=1e-12), (phase, k)
    # layers are chained: layer k's attention reads layer k-1's output, never layer 1's
    att = [n for n in stacked.topo_order() if n.op == "Attention"]
    assert [n.annotations["layer"] for n in att] == list(range(5))
    assert np.all(np.diff([stacked.topo_order().index(n) for n in att]) > 0)
