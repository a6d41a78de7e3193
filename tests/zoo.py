"""The model zoo of the families × exporters matrix: tiny seeded Hugging Face models of every
common family, their ONNX exports (cached by content hash), and one function that runs a cell.

A *family* is a ``transformers`` architecture with a tiny config (2 layers, hidden 64, windows of a
few tokens so that verification crosses them). A *cell* is (family, exporter):

- ``torch``: rooftop's own importer (``model.source=hf_config`` or a Hydra ``_target_`` module);
- ``dynamo``: ``torch.onnx.export(module, ..., dynamo=True)`` at torch's default opset, dynamic
  batch and sequence, then ``model=onnx``;
- ``legacy``: ``torch.onnx.export(..., dynamo=False)`` (TorchScript) at its default opset.

Each cell runs the real pipeline (``compiler.driver.pipeline.run``: default recipe, emission,
verification) and ends in one :class:`Outcome`: ``fused`` (exit 0, every attention one
``Attention`` op, a decoder's KV cache lifted, verified against the source), ``gated`` (as fused,
but the cost gate kept some attention unfused, its reason in report.json passes[].notes),
``refused`` (exit 2 with its one-paragraph reason), ``export_failed`` (the exporter itself cannot
export the model), or ``failed`` (anything else: a traceback, exit 4, attention left
unfused, a decoder without a cache).

Exports are cached under ``cache_dir()`` by a hash of the family spec, the exporter and the
torch / transformers versions, so the tests and ``tools/families_matrix.py`` share them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXPORTERS = ("torch", "dynamo", "legacy")
EXPORT_BATCH, EXPORT_SEQ = 2, 8
IMAGE = (3, 32, 32)

_T = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
          num_attention_heads=4, max_position_embeddings=128)
_KV = dict(_T, num_key_value_heads=2)
EXPORT_EXPERTS = "batched_mm"
# the cells' workload: big enough that fusion pays on the default hardware (the cost gate decides)
WORKLOAD = ("workload.batch=4", "workload.prompt_len=64", "workload.gen_len=8")
WINDOW = 6   # sliding windows of the windowed families: verification (≥ 9 tokens) crosses them


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture: ``config`` / ``model`` are transformers class names; ``task``:
    ``causal_lm`` (input_ids, attention_mask → logits), ``encoder`` (→ last_hidden_state),
    ``seq2seq`` (input_ids, attention_mask, decoder_input_ids → last_hidden_state), ``vision``
    (pixel_values), ``speech`` (input_values / input_features); ``kind`` groups the matrix rows;
    ``submodule``: use this attribute of the built model (Whisper's encoder)."""

    name: str
    config: str
    model: str
    kwargs: dict
    task: str
    kind: str
    submodule: str | None = None
    layers: int = 2          # attention layers expected after fusion
    note: str = ""

    @property
    def spec(self) -> dict:
        return {"config": self.config, "model": self.model, "kwargs": self.kwargs, "task": self.task,
                "submodule": self.submodule}


def _f(name, config, model, kwargs, task="causal_lm", kind="decoder", **kw) -> Family:
    return Family(name, config, model, kwargs, task, kind, **kw)


FAMILY_LIST = [
    # ---- dense decoders
    _f("llama", "LlamaConfig", "LlamaForCausalLM", _KV),
    _f("mistral", "MistralConfig", "MistralForCausalLM", dict(_KV, sliding_window=WINDOW)),
    _f("qwen2", "Qwen2Config", "Qwen2ForCausalLM", dict(_KV, tie_word_embeddings=True)),
    _f("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(_KV, head_dim=16)),
    _f("phi", "PhiConfig", "PhiForCausalLM", dict(_T, partial_rotary_factor=0.5)),
    _f("phi3", "Phi3Config", "Phi3ForCausalLM", dict(_KV, partial_rotary_factor=0.5, pad_token_id=0,
                                                     bos_token_id=1, eos_token_id=2)),
    _f("gemma", "GemmaConfig", "GemmaForCausalLM", dict(_T, num_key_value_heads=1, head_dim=16,
                                                        hidden_act="gelu_pytorch_tanh")),
    _f("gemma2", "Gemma2Config", "Gemma2ForCausalLM",
       dict(_KV, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16,
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            layer_types=["sliding_attention", "full_attention"])),
    _f("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM",
       dict(_T, num_key_value_heads=1, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention"])),
    _f("gpt2", "GPT2Config", "GPT2LMHeadModel", dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4,
                                                      n_positions=128)),
    _f("gpt_neox", "GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_T, rotary_pct=0.25, use_parallel_residual=True)),
    _f("gptj", "GPTJConfig", "GPTJForCausalLM", dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4,
                                                      rotary_dim=8, n_positions=128)),
    _f("falcon", "FalconConfig", "FalconForCausalLM",
       dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            new_decoder_architecture=False, multi_query=True, parallel_attn=True, alibi=False, bias=False)),
    _f("opt", "OPTConfig", "OPTForCausalLM",
       dict(vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
            word_embed_proj_dim=64, max_position_embeddings=128, pad_token_id=1)),
    _f("bloom", "BloomConfig", "BloomForCausalLM", dict(vocab_size=256, hidden_size=64, n_layer=2, n_head=4)),
    _f("mpt", "MptConfig", "MptForCausalLM", dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4,
                                                  max_seq_len=128, expansion_ratio=2)),
    _f("codegen", "CodeGenConfig", "CodeGenForCausalLM", dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4,
                                                              rotary_dim=8, n_positions=128, n_ctx=128)),
    _f("cohere", "CohereConfig", "CohereForCausalLM", _KV),
    _f("olmo", "OlmoConfig", "OlmoForCausalLM", dict(_KV, clip_qkv=8.0)),
    _f("olmo2", "Olmo2Config", "Olmo2ForCausalLM", _KV),
    _f("granite", "GraniteConfig", "GraniteForCausalLM", _KV),
    _f("starcoder2", "Starcoder2Config", "Starcoder2ForCausalLM", dict(_KV, sliding_window=WINDOW)),
    _f("stablelm", "StableLmConfig", "StableLmForCausalLM", dict(_KV, partial_rotary_factor=0.25)),
    _f("xglm", "XGLMConfig", "XGLMForCausalLM", dict(vocab_size=256, d_model=64, ffn_dim=128, num_layers=2,
                                                     attention_heads=4, max_position_embeddings=128)),
    _f("gpt_bigcode", "GPTBigCodeConfig", "GPTBigCodeForCausalLM",
       dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128, multi_query=True)),
    # ---- mixture of experts
    _f("mixtral", "MixtralConfig", "MixtralForCausalLM", dict(_KV, num_local_experts=4, num_experts_per_tok=2),
       kind="moe"),
    _f("qwen2_moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
       dict(_KV, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=64), kind="moe"),
    _f("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
       dict(_KV, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32), kind="moe"),
    _f("phimoe", "PhimoeConfig", "PhimoeForCausalLM", dict(_KV, num_local_experts=4, num_experts_per_tok=2),
       kind="moe"),
    _f("dbrx", "DbrxConfig", "DbrxForCausalLM",
       dict(vocab_size=256, d_model=64, n_heads=4, n_layers=2, max_seq_len=128,
            attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0}, ffn_config={"ffn_hidden_size": 128, "moe_num_experts": 4,
                                                        "moe_top_k": 2}), kind="moe"),
    _f("deepseek_v2", "DeepseekV2Config", "DeepseekV2ForCausalLM",
       dict(_T, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
            qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1), kind="moe"),
    _f("deepseek_v3", "DeepseekV3Config", "DeepseekV3ForCausalLM",
       dict(_T, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
            qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
            topk_group=1), kind="moe"),
    _f("gpt_oss", "GptOssConfig", "GptOssForCausalLM",
       dict(_KV, intermediate_size=64, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
            sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]), kind="moe"),
    _f("olmoe", "OlmoeConfig", "OlmoeForCausalLM", dict(_KV, num_experts=4, num_experts_per_tok=2), kind="moe"),
    # ---- encoders
    _f("bert", "BertConfig", "BertModel", _T, task="encoder", kind="encoder"),
    _f("roberta", "RobertaConfig", "RobertaModel", dict(_T, pad_token_id=1), task="encoder", kind="encoder"),
    _f("distilbert", "DistilBertConfig", "DistilBertModel",
       dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=128),
       task="encoder", kind="encoder"),
    _f("albert", "AlbertConfig", "AlbertModel", dict(_T, embedding_size=32), task="encoder", kind="encoder"),
    _f("electra", "ElectraConfig", "ElectraModel", dict(_T, embedding_size=32), task="encoder", kind="encoder"),
    _f("deberta_v2", "DebertaV2Config", "DebertaV2Model",
       dict(_T, relative_attention=True, pos_att_type=["p2c", "c2p"]),
       task="encoder", kind="encoder"),
    _f("mobilebert", "MobileBertConfig", "MobileBertModel",
       dict(_T, embedding_size=32, intra_bottleneck_size=32, true_hidden_size=32,
            num_feedforward_networks=1), task="encoder", kind="encoder"),
    _f("t5", "T5Config", "T5EncoderModel", dict(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                                num_heads=4, feed_forward_proj="relu"),
       task="encoder", kind="encoder"),
    # ---- encoder-decoders
    _f("bart", "BartConfig", "BartModel",
       dict(vocab_size=256, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128),
       task="seq2seq", kind="encoder_decoder", layers=6),
    _f("mbart", "MBartConfig", "MBartModel",
       dict(vocab_size=256, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128),
       task="seq2seq", kind="encoder_decoder", layers=6),
    # ---- vision
    _f("vit", "ViTConfig", "ViTModel", dict(image_size=32, patch_size=8, num_channels=3, hidden_size=64,
                                            num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
       task="vision", kind="vision"),
    _f("deit", "DeiTConfig", "DeiTModel", dict(image_size=32, patch_size=8, num_channels=3, hidden_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
       task="vision", kind="vision"),
    # ---- speech
    _f("whisper", "WhisperConfig", "WhisperModel",
       dict(vocab_size=256, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
            max_source_positions=64, max_target_positions=32, pad_token_id=1, bos_token_id=2,
            eos_token_id=2, decoder_start_token_id=2), task="speech", kind="speech",
       submodule="encoder"),
    _f("wav2vec2", "Wav2Vec2Config", "Wav2Vec2Model",
       dict(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4, do_stable_layer_norm=True, feat_extract_norm="layer"),
       task="speech", kind="speech"),
    # ---- state-space
    _f("mamba", "MambaConfig", "MambaForCausalLM", dict(vocab_size=256, hidden_size=64, state_size=8,
                                                        num_hidden_layers=2, expand=2, conv_kernel=4),
       kind="state_space", layers=0),
    _f("jamba", "JambaConfig", "JambaForCausalLM",
       dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
            expert_layer_offset=1, num_experts=2, num_experts_per_tok=1, mamba_d_state=8, mamba_d_conv=4,
            mamba_expand=2, use_mamba_kernels=False), kind="state_space", layers=1),
]
FAMILIES: dict[str, Family] = {f.name: f for f in FAMILY_LIST}
KINDS = ("decoder", "moe", "encoder", "encoder_decoder", "vision", "speech", "state_space")


# ------------------------------------------------------------------------------------------------
# building

def _offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_hf(family: str, attn: str | None = None):
    """The bare transformers model (seeded random weights; 1-D parameters randomized too, since
    exporters fold HF's zeros and ones away), eval, fp32. ``attn``: the attention implementation,
    by default transformers' own choice (SDPA where the family supports it, else eager) — what a
    user gets."""
    import torch
    import transformers
    _offline()
    f = FAMILIES[family]
    cfg = getattr(transformers, f.config)(**f.kwargs)
    if f.kind == "moe":
        # the experts implementation both ONNX exporters can trace (transformers' default uses
        # histc / data-dependent loops that they cannot): what a user exporting a MoE picks
        cfg._experts_implementation = EXPORT_EXPERTS
    torch.manual_seed(0)
    cls = getattr(transformers, f.model)
    m = (cls._from_config(cfg, attn_implementation=attn) if attn else cls(cfg)).eval().float()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1:
                base = 1.0 if ("norm" in name or "ln" in name) and name.endswith("weight") else 0.0
                if family in ("gemma", "gemma2", "gemma3") and "norm" in name:
                    base = 0.0   # Gemma's RMSNorm scales by (1 + weight)
                p.copy_(base + 0.05 * torch.randn(p.shape, generator=g))
    if f.submodule:
        m = getattr(m, f.submodule)
    return m


def _torch():
    import torch
    return torch


class CausalLMModule(_torch().nn.Module):
    """What a user exports: ``(input_ids, attention_mask) → logits`` (no cache, no position_ids:
    the model derives them). The other tasks' modules below differ only in their inputs."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class EncoderModule(CausalLMModule):
    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class Seq2SeqModule(CausalLMModule):
    def forward(self, input_ids, attention_mask, decoder_input_ids):
        return self.m(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                      use_cache=False).last_hidden_state


class VisionModule(CausalLMModule):
    def forward(self, pixel_values):
        return self.m(pixel_values=pixel_values).last_hidden_state


class WhisperEncoderModule(CausalLMModule):
    def forward(self, input_features):
        return self.m(input_features=input_features).last_hidden_state


class AudioModule(CausalLMModule):
    def forward(self, input_values):
        return self.m(input_values=input_values).last_hidden_state


def _speech_input(family: str) -> str:
    return "input_features" if family == "whisper" else "input_values"


def family_module(family: str, attn: str | None = None):
    t = FAMILIES[family].task
    cls = {"causal_lm": CausalLMModule, "encoder": EncoderModule, "seq2seq": Seq2SeqModule,
           "vision": VisionModule}.get(t) or (WhisperEncoderModule if family == "whisper" else AudioModule)
    return cls(build_hf(family, attn)).eval()


def input_names(family: str) -> list[str]:
    t = FAMILIES[family].task
    return {"causal_lm": ["input_ids", "attention_mask"], "encoder": ["input_ids", "attention_mask"],
            "seq2seq": ["input_ids", "attention_mask", "decoder_input_ids"], "vision": ["pixel_values"],
            "speech": [_speech_input(family)]}[t]


def family_inputs(family: str, batch: int = EXPORT_BATCH, seq: int = EXPORT_SEQ, seed: int = 0,
                  pad: bool = False) -> dict[str, np.ndarray]:
    """Seeded example inputs (``pad``: the last row right-padded by two tokens)."""
    f = FAMILIES[family]
    rng = np.random.default_rng(seed)
    if f.task == "vision":
        return {"pixel_values": rng.standard_normal((batch, *IMAGE)).astype(np.float32)}
    if f.task == "speech":
        if family == "whisper":
            frames = 2 * int(f.kwargs["max_source_positions"])
            return {"input_features": rng.standard_normal((batch, int(f.kwargs["num_mel_bins"]), frames)).astype(np.float32)}
        return {"input_values": rng.standard_normal((batch, 400)).astype(np.float32)}
    vocab = min(int(f.kwargs.get("vocab_size", 256)), 250)
    ids = rng.integers(3, vocab, (batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    if pad and seq > 2:
        mask[-1, seq - 2:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if f.task == "seq2seq":
        out["decoder_input_ids"] = rng.integers(3, vocab, (batch, seq), dtype=np.int64)
    return out


def _dynamic(family: str):
    """Dynamic axes per input: batch everywhere; the sequence of token inputs (the decoder's own)."""
    t = FAMILIES[family].task
    if t in ("vision", "speech"):
        return {n: {0: "batch"} for n in input_names(family)}
    out = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    if t == "seq2seq":
        out["decoder_input_ids"] = {0: "batch", 1: "dec_seq"}
    return out


# ------------------------------------------------------------------------------------------------
# exports, cached by content hash

EXPORT_RECIPE_VERSION = 1   # bump when export() changes what it writes


def cache_dir() -> Path:
    return Path(os.environ.get("ROOFTOP_TEST_CACHE") or (ROOT / ".cache" / "zoo"))


def export_key(family: str, exporter: str, attn: str | None = None) -> str:
    import torch
    import transformers
    extra = {"experts": EXPORT_EXPERTS} if FAMILIES[family].kind == "moe" else {}
    blob = json.dumps({"family": FAMILIES[family].spec, "exporter": exporter, "attn": attn, **extra,
                       "torch": torch.__version__, "transformers": transformers.__version__,
                       "recipe": EXPORT_RECIPE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def export(family: str, exporter: str, attn: str | None = None, *, cache: Path | None = None) -> str:
    """The ONNX export of ``family`` by ``exporter`` (``dynamo`` | ``legacy``) as a user writes it
    (dynamic batch and sequence, the exporter's default opset); cached by content hash. Raises
    what the exporter raises."""
    cache = Path(cache or cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{family}_{exporter}_{export_key(family, exporter, attn)}.onnx"
    if path.exists():
        return str(path)
    torch = _torch()
    module = family_module(family, attn)
    ex = {k: torch.from_numpy(v) for k, v in family_inputs(family).items()}
    names = list(ex)
    out = "logits" if FAMILIES[family].task == "causal_lm" else "last_hidden_state"
    tmp = tempfile.mkdtemp(dir=cache)
    tmp_path = os.path.join(tmp, path.name)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                dims: dict[str, Any] = {}
                shapes = {k: {ax: dims.setdefault(nm, torch.export.Dim.DYNAMIC) for ax, nm in v.items()}
                          for k, v in _dynamic(family).items()}
                prog = torch.onnx.export(module, (), kwargs=ex, dynamo=True, input_names=names,
                                         output_names=[out], dynamic_shapes=shapes, verbose=False)
                prog.save(tmp_path, external_data=False)
            elif exporter == "legacy":
                axes = {**_dynamic(family), out: {0: "batch"}}
                torch.onnx.export(module, tuple(ex.values()), tmp_path, dynamo=False, input_names=names,
                                  output_names=[out], dynamic_axes=axes)
            else:
                raise ValueError(f"unknown exporter {exporter!r}")
        os.replace(tmp_path, path)
    finally:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    return str(path)


# ------------------------------------------------------------------------------------------------
# the model config rooftop's own importer takes

def model_config(family: str) -> dict:
    """``source: hf_config`` for the AutoModel families (causal LMs and encoders), ``source:
    module`` (Hydra ``_target_``: :func:`family_module`) with declared inputs for the others."""
    import transformers
    f = FAMILIES[family]
    if f.task in ("causal_lm", "encoder") and f.name != "t5":   # (AutoModel of t5 is the seq2seq T5Model)
        model_type = getattr(transformers, f.config).model_type
        return {"name": family, "source": "hf_config", "weights": "random", "seed": 0, "dtype": "float32",
                "attn_implementation": "sdpa", "task": "causal_lm" if f.task == "causal_lm" else "embedding",
                "config": {"model_type": model_type, **json.loads(json.dumps(f.kwargs))}}
    dims = {"input_ids": ["B", "S"], "attention_mask": ["B", "S"], "decoder_input_ids": ["B", "S"],
            "pixel_values": ["B", *IMAGE]}
    ex = family_inputs(family)
    inputs = {}
    for k, v in ex.items():
        shape = dims.get(k) or ["B", *v.shape[1:]]
        spec: dict[str, Any] = {"shape": [d if isinstance(d, str) else int(d) for d in shape],
                                "dtype": "int64" if v.dtype == np.int64 else "float32"}
        if k == "attention_mask":
            spec["high"] = 2
        elif v.dtype == np.int64:
            spec["high"] = 250
        inputs[k] = spec
    return {"name": family, "source": "module", "weights": "random", "seed": 0, "task": "embedding",
            "module": {"_target_": "tests.zoo.family_module", "family": family}, "inputs": inputs,
            "outputs": ["logits" if f.task == "causal_lm" else "last_hidden_state"]}


# ------------------------------------------------------------------------------------------------
# one cell

@dataclasses.dataclass
class Outcome:
    family: str
    exporter: str
    outcome: str               # fused | gated | refused | export_failed | failed
    detail: str = ""
    exit_code: int | None = None
    attention: int | None = None
    kv_cache: bool | None = None
    verified: bool | None = None
    seconds: float = 0.0

    def row(self) -> dict:
        return dataclasses.asdict(self)


def _first_line(s: str, n: int = 400) -> str:
    s = " ".join(str(s).split())
    return s[:n] + ("…" if len(s) > n else "")


def run_cell(family: str, exporter: str, *, workload: tuple = (), cache: Path | None = None) -> Outcome:
    """Run (family, exporter) through the whole pipeline and classify the result."""
    from compiler.driver.pipeline import run
    from compiler.errors import RooftopError
    from tests.conftest import compose
    f = FAMILIES[family]
    t0 = time.perf_counter()
    res = Outcome(family, exporter, "failed")
    try:
        if exporter == "torch":
            over = ["model=llama_tiny"]
        else:
            try:
                path = export(family, exporter, cache=cache)
            except Exception as e:   # noqa: BLE001 - the exporter itself fails: not rooftop's cell
                res.outcome, res.detail = "export_failed", _first_line(f"{type(e).__name__}: {e}")
                return res
            over = ["model=onnx", f"model.path={path}"]
        cfg = compose(over + ["report.html=false", *WORKLOAD, *workload])
        if exporter == "torch":
            cfg["model"] = model_config(family)
        with tempfile.TemporaryDirectory() as out:
            report = run(cfg, out, show_progress=False)
        res.exit_code = 0
        ops = (report.get("model") or {}).get("op_counts") or {}
        res.attention = int(ops.get("Attention", 0)) + int(ops.get("LatentAttention", 0))   # MLA: one op a layer
        res.kv_cache = bool((report.get("memory") or {}).get("kv_bytes_per_token"))
        res.verified = bool((report.get("emit") or {}).get("verified"))
        problems = []
        gated = sum(int(p.get("stats", {}).get("attention.rejected_by_cost", 0)) for p in report.get("passes", []))
        if res.attention < f.layers and res.attention + gated >= f.layers and ops.get("Softmax", 0) <= gated:
            # every unfused attention matched and was kept by the cost gate (its reason in passes[].notes)
            res.outcome = "gated"
            why = [n for p in report.get("passes", []) for n in p.get("notes", [])]
            res.detail = f"{res.attention} Attention; {gated} kept unfused by the cost gate" + \
                (": " + _first_line(why[0]["check"], 200) if why else "")
            if not res.verified:
                res.outcome, res.detail = "failed", res.detail + "; not verified"
            return res
        if res.attention < f.layers:
            problems.append(f"{res.attention} of {f.layers} attention layers fused"
                            + (f" ({ops.get('Softmax', 0)} Softmax left)" if ops.get("Softmax") else ""))
        if f.task == "causal_lm" and f.layers and not res.kv_cache:
            problems.append("no KV cache")
        if not res.verified:
            problems.append("not verified: " + _first_line(json.dumps((report.get("emit") or {}).get("verification")), 200))
        if problems:
            res.detail = "; ".join(problems)
            why = [p for p in report.get("passes", []) if p.get("notes")]
            if why:
                res.detail += " — passes[] notes: " + _first_line(json.dumps(why[0]["notes"][:2]), 300)
        else:
            res.outcome = "fused"
            res.detail = f"{res.attention} Attention" + (", KV cache" if res.kv_cache else "")
    except RooftopError as e:
        res.exit_code = getattr(e, "exit_code", None)
        res.outcome = "refused" if res.exit_code == 2 else "failed"
        res.detail = _first_line(str(e), 600)
    except Exception as e:   # noqa: BLE001 - a traceback is a failed cell
        res.exit_code = 1
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f"{Path(fr.filename).name}:{fr.lineno}" for fr in reversed(tb)
                      if "/compiler/" in fr.filename or "/passes/" in fr.filename), "")
        res.detail = _first_line(f"{type(e).__name__}: {e} [{where}]")
    finally:
        res.seconds = round(time.perf_counter() - t0, 1)
    return res


@contextlib.contextmanager
def quiet():
    import logging
    prev = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.getLogger().setLevel(prev)
