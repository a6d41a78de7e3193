"""Decoder artifacts take an ``attention_mask`` [B, P + S] beside the KV cache: a batch of prompts
of different lengths (left or right padded), prefilled and then decoded token by token on the
cache, gives what Hugging Face's model gives on the same padded batch (torch eager, fp32), for a
plain causal decoder and a sliding-window one whose window the sequence crosses."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.graphs import ort_session

PROMPT, STEPS = 9, 4


@pytest.fixture(scope="module")
def decoders():
    from compiler.frontends.models import build_torch_model
    from tests import zoo
    from tests.conftest import imported, model_cfg
    cache = {}

    def get(name):
        if name not in cache:
            if name == "llama_tiny":
                cfg = model_cfg("llama_tiny")
                g = imported("llama_tiny")
            else:   # a sliding window of zoo.WINDOW tokens, crossed by the prompt and the steps
                from compiler.frontends.models import import_torch
                from passes.cleanup import fold_constants, remove_noops
                from tests.conftest import prepare
                cfg = zoo.model_config(name)
                g = import_torch(cfg)
                prepare(g)
                remove_noops(g)
                fold_constants(g)
            module = build_torch_model(cfg)[0].eval()
            cache[name] = (g, ort_session(g), getattr(module, "model", module))
        return cache[name]
    return get


def _padded_batch(vocab: int, side: str):
    """Three prompts of 9, 6 and 3 tokens padded to 9 on ``side``, plus STEPS tokens each."""
    gen = torch.Generator().manual_seed(3)
    lens = [PROMPT, PROMPT - 3, PROMPT - 6]
    ids = torch.randint(3, vocab, (3, PROMPT + STEPS), generator=gen)
    mask = torch.ones(3, PROMPT + STEPS, dtype=torch.int64)
    for b, n in enumerate(lens):
        pad = PROMPT - n
        if side == "left":
            mask[b, :pad] = 0
        else:   # right: the prompt, then padding, then the generated tokens
            mask[b, n:PROMPT] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ["llama_tiny", "mistral"])
def test_padded_batch_prefill_and_decode_match_hugging_face(decoders, name, side):
    g, sess, hf = decoders(name)
    assert "attention_mask" in [i.name for i in sess.get_inputs()]
    ids, mask, pos = _padded_batch(hf.config.vocab_size, side)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits.numpy()
    layers = sum(1 for t in g.inputs if t.startswith("past_key."))
    kvh, hd = g.type("past_key.0").shape[1], g.type("past_key.0").shape[3]
    names = [o.name for o in sess.get_outputs()]
    past = {f"past_{kv}.{i}": np.zeros((3, kvh, 0, hd), np.float32) for i in range(layers)
            for kv in ("key", "value")}
    keep = mask.numpy().astype(bool)
    start = 0
    for n in [PROMPT] + [1] * STEPS:
        feed = {"input_ids": ids[:, start:start + n].numpy(), "position_ids": pos[:, start:start + n].numpy(),
                "attention_mask": mask[:, :start + n].numpy(), **past}
        res = dict(zip(names, sess.run(None, feed)))
        got, want = res["logits"], ref[:, start:start + n]
        valid = keep[:, start:start + n]   # padded positions' logits are meaningless in both
        assert np.abs(got[valid] - want[valid]).max() <= 2e-4, (name, side, start)
        past = {k: res[k.replace("past_", "present_")] for k in past}
        start += n
    assert past["past_key.0"].shape[2] == PROMPT + STEPS
