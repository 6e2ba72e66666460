"""Random-weights models built offline, and the choice of a default model.

The hosts this suite runs on (CI, the offline GPU boxes) cannot download models. With
``ignore_eos=True`` the weights do not change what a pause costs, only the shape does,
so a model with real shapes and random weights plus a BPE tokenizer trained here on
generated text is a faithful stand-in for the real checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where a tensor is made: the CLI must start without it
    import torch

# Bump when a preset's files change, so cached copies are rebuilt.
PRESET_REVISION = 1


@dataclass(frozen=True)
class Preset:
    """The shape of a generated model.

    ``arch`` picks the layout: ``opt`` (dense), ``mixtral`` (MoE, classic checkpoint
    layout), ``llama``, ``qwen3`` (dense) or ``qwen3_moe``. A ``dummy`` preset has no weight
    file: only config.json and the tokenizer are written, and the engine starts with vLLM's
    ``--load-format dummy``, which makes random weights on the device. That is what lets an
    8B or 30B shape run on a host that cannot download (or hold on disk) the checkpoint.
    ``ffn`` is the dense MLP width (each expert's for Mixtral; ``moe_ffn`` for Qwen3-MoE).
    """

    name: str
    arch: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    dtype: str
    kv_heads: int = 0  # 0: as many as heads
    head_dim: int = 0  # 0: hidden // heads
    experts: int = 0  # > 0: a mixture of experts with this many experts per layer
    top_k: int = 2
    moe_ffn: int = 0
    rope_theta: float = 10000.0
    dummy: bool = False
    about: str = ""
    full_layers: int = 0  # > 0: a cut of a model this many layers deep (the DP model scales by it)

    @property
    def tokenizer_vocab(self) -> int:
        """Size of the generated BPE vocabulary: the corpus has no more to learn than a few
        thousand merges, and every id it makes is below the model's vocab, which is what
        the embedding and LM head are shaped by."""
        return min(self.vocab, 8192)

    def config(self) -> dict:
        return _CONFIGS[self.arch](self)


def _opt_config(p: Preset) -> dict:
    return {
        "architectures": ["OPTForCausalLM"],
        "model_type": "opt",
        "vocab_size": p.vocab,
        "hidden_size": p.hidden,
        "word_embed_proj_dim": p.hidden,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "ffn_dim": p.ffn,
        "max_position_embeddings": p.max_positions,
        "do_layer_norm_before": True,
        "activation_function": "relu",
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "layerdrop": 0.0,
        "init_std": 0.02,
        "enable_bias": True,
        "layer_norm_elementwise_affine": True,
        "pad_token_id": 1,
        "bos_token_id": 2,
        "eos_token_id": 2,
        "torch_dtype": p.dtype,
        "use_cache": True,
    }


def _decoder_config(p: Preset, architecture: str, model_type: str) -> dict:
    """What the Llama-family layouts (Llama, Mixtral, Qwen3, Qwen3-MoE) share."""
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": p.vocab,
        "hidden_size": p.hidden,
        "intermediate_size": p.ffn,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads or p.heads,
        "max_position_embeddings": p.max_positions,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": p.rope_theta,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "pad_token_id": 1,
        "bos_token_id": 2,
        "eos_token_id": 2,
        "torch_dtype": p.dtype,
        "use_cache": True,
    }
    if p.head_dim:
        config["head_dim"] = p.head_dim
    return config


def _mixtral_config(p: Preset) -> dict:
    return {**_decoder_config(p, "MixtralForCausalLM", "mixtral"), "rms_norm_eps": 1e-5,
            "num_local_experts": p.experts, "num_experts_per_tok": p.top_k, "sliding_window": None,
            "router_aux_loss_coef": 0.0}


def _llama_config(p: Preset) -> dict:
    # Llama 3.1's long-context RoPE scaling, as its config.json has it.
    return {**_decoder_config(p, "LlamaForCausalLM", "llama"), "rms_norm_eps": 1e-5, "mlp_bias": False,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}


def _qwen3_config(p: Preset) -> dict:
    return {**_decoder_config(p, "Qwen3ForCausalLM", "qwen3"), "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": p.layers}


def _qwen3_moe_config(p: Preset) -> dict:
    return {**_qwen3_config(p), "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
            "num_experts": p.experts, "num_experts_per_tok": p.top_k, "moe_intermediate_size": p.moe_ffn,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True,
            "output_router_logits": False, "router_aux_loss_coef": 0.001}


_CONFIGS = {"opt": _opt_config, "mixtral": _mixtral_config, "llama": _llama_config, "qwen3": _qwen3_config,
            "qwen3_moe": _qwen3_moe_config}

# Production shapes keep their real widths, depths, heads and vocabularies; only
# max_position_embeddings is cut to 4096, so vLLM's default max_model_len (and the KV
# cache one sequence must fit) suits the suite's short requests on one GPU. The small
# presets use head_dim 64 because vLLM's CPU attention rejects 16.
PRESETS = {p.name: p for p in (
    Preset("tiny", "opt", layers=2, hidden=128, heads=2, ffn=512, vocab=2000, max_positions=2048,
           dtype="bfloat16", about="2-layer OPT, random weights on disk: the CPU and CI model"),
    Preset("opt-125m", "opt", layers=12, hidden=768, heads=12, ffn=3072, vocab=50272, max_positions=2048,
           dtype="float16", about="OPT-125m's exact shape, random weights on disk"),
    Preset("tiny-moe", "mixtral", layers=4, hidden=512, heads=8, ffn=1024, vocab=8192, max_positions=4096,
           dtype="bfloat16", experts=8, top_k=2,
           about="4-layer Mixtral, 8 experts, top-2 (GPU only: vLLM's CPU backend cannot run MoE)"),
    Preset("tiny-qwen3", "qwen3", layers=2, hidden=128, heads=2, kv_heads=1, head_dim=64, ffn=512, vocab=2000,
           max_positions=4096, dtype="bfloat16", dummy=True,
           about="2-layer Qwen3, weights made by vLLM (--load-format dummy): the no-weights path on a CPU"),
    Preset("qwen3-8b", "qwen3", layers=36, hidden=4096, heads=32, kv_heads=8, head_dim=128, ffn=12288,
           vocab=151936, max_positions=4096, dtype="bfloat16", rope_theta=1e6, dummy=True,
           about="Qwen3-8B shape, dense (16 GB of bf16 weights made on the GPU)"),
    Preset("llama-3.1-8b", "llama", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, ffn=14336,
           vocab=128256, max_positions=4096, dtype="bfloat16", rope_theta=5e5, dummy=True,
           about="Llama-3.1-8B shape, dense (16 GB)"),
    Preset("qwen3-30b-a3b", "qwen3_moe", layers=48, hidden=2048, heads=32, kv_heads=4, head_dim=128, ffn=6144,
           vocab=151936, max_positions=4096, dtype="bfloat16", experts=128, top_k=8, moe_ffn=768, rope_theta=1e6,
           dummy=True, about="Qwen3-30B-A3B shape, MoE, 128 experts, top-8 (61 GB): the default on a large GPU"),
    Preset("qwen3-235b-a22b-4l", "qwen3_moe", layers=4, hidden=4096, heads=64, kv_heads=4, head_dim=128,
           ffn=12288, vocab=151936, max_positions=4096, dtype="bfloat16", experts=128, top_k=8, moe_ffn=1536,
           rope_theta=1e6, dummy=True, full_layers=94,
           about="4 of Qwen3-235B-A22B's 94 layers: its large experts (1536 wide) on one GPU (22 GB)"),
)}


_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "dor",
              "lin", "mar", "tes", "vel", "gra", "sho", "fen", "bri"]


def corpus(n_words: int, seed: int = 0) -> list[str]:
    """Generated words for the tokenizer to learn from (and prompts to be drawn from)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(n_words)]


def _train_tokenizer(vocab: int, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = corpus(60_000)
    lines = [" ".join(words[i:i + 12]) + "." for i in range(0, len(words), 12)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # OPT's special ids: <s>=0, <pad>=1, </s>=2, <unk>=3.
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(str(out))


# A checkpoint's tensors as specs: (name, shape, init), init one of "rand", "ones", "zeros".
Spec = tuple[str, tuple[int, ...], str]


def _opt_specs(preset: Preset) -> list[Spec]:
    h, f = preset.hidden, preset.ffn
    specs: list[Spec] = [
        ("model.decoder.embed_tokens.weight", (preset.vocab, h), "rand"),
        # OPT's learned positions are offset by 2.
        ("model.decoder.embed_positions.weight", (preset.max_positions + 2, h), "rand"),
        ("model.decoder.final_layer_norm.weight", (h,), "ones"),
        ("model.decoder.final_layer_norm.bias", (h,), "zeros"),
    ]
    for i in range(preset.layers):
        p = f"model.decoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            specs += [(p + f"self_attn.{proj}.weight", (h, h), "rand"), (p + f"self_attn.{proj}.bias", (h,), "zeros")]
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            specs += [(p + f"{ln}.weight", (h,), "ones"), (p + f"{ln}.bias", (h,), "zeros")]
        specs += [(p + "fc1.weight", (f, h), "rand"), (p + "fc1.bias", (f,), "zeros"),
                  (p + "fc2.weight", (h, f), "rand"), (p + "fc2.bias", (h,), "zeros")]
    return specs


def _mixtral_specs(preset: Preset) -> list[Spec]:
    """The classic Mixtral checkpoint layout (block_sparse_moe.experts.J.w1/w2/w3)."""
    h, f = preset.hidden, preset.ffn
    specs: list[Spec] = [("model.embed_tokens.weight", (preset.vocab, h), "rand"), ("model.norm.weight", (h,), "ones"),
                         ("lm_head.weight", (preset.vocab, h), "rand")]
    for i in range(preset.layers):
        p = f"model.layers.{i}."
        specs += [(p + f"self_attn.{proj}.weight", (h, h), "rand") for proj in ("q_proj", "k_proj", "v_proj", "o_proj")]
        specs += [(p + "input_layernorm.weight", (h,), "ones"), (p + "post_attention_layernorm.weight", (h,), "ones"),
                  (p + "block_sparse_moe.gate.weight", (preset.experts, h), "rand")]
        for j in range(preset.experts):
            e = p + f"block_sparse_moe.experts.{j}."
            specs += [(e + "w1.weight", (f, h), "rand"), (e + "w3.weight", (f, h), "rand"), (e + "w2.weight", (h, f), "rand")]
    return specs


def _decoder_specs(preset: Preset) -> list[Spec]:
    """The Hugging Face layout of Llama, Qwen3 (q_norm / k_norm) and Qwen3-MoE (experts
    J.gate_proj/up_proj/down_proj and a router, every layer): what vLLM's load_weights
    takes for the presets vLLM otherwise fills itself (``dummy``), so a weight_sync can push
    a full set of their shape (bench_pause.trainer)."""
    h, hd = preset.hidden, preset.head_dim or preset.hidden // preset.heads
    q, kv = preset.heads * hd, (preset.kv_heads or preset.heads) * hd
    specs: list[Spec] = [("model.embed_tokens.weight", (preset.vocab, h), "rand")]
    for i in range(preset.layers):
        p = f"model.layers.{i}."
        specs += [(p + "self_attn.q_proj.weight", (q, h), "rand"), (p + "self_attn.k_proj.weight", (kv, h), "rand"),
                  (p + "self_attn.v_proj.weight", (kv, h), "rand"), (p + "self_attn.o_proj.weight", (h, q), "rand")]
        if preset.arch in ("qwen3", "qwen3_moe"):
            specs += [(p + "self_attn.q_norm.weight", (hd,), "ones"), (p + "self_attn.k_norm.weight", (hd,), "ones")]
        specs += [(p + "input_layernorm.weight", (h,), "ones"), (p + "post_attention_layernorm.weight", (h,), "ones")]
        if preset.arch == "qwen3_moe":
            f = preset.moe_ffn
            specs.append((p + "mlp.gate.weight", (preset.experts, h), "rand"))
            for j in range(preset.experts):
                e = p + f"mlp.experts.{j}."
                specs += [(e + "gate_proj.weight", (f, h), "rand"), (e + "up_proj.weight", (f, h), "rand"),
                          (e + "down_proj.weight", (h, f), "rand")]
        else:
            f = preset.ffn
            specs += [(p + "mlp.gate_proj.weight", (f, h), "rand"), (p + "mlp.up_proj.weight", (f, h), "rand"),
                      (p + "mlp.down_proj.weight", (h, f), "rand")]
    return specs + [("model.norm.weight", (h,), "ones"), ("lm_head.weight", (preset.vocab, h), "rand")]


_SPECS = {"opt": _opt_specs, "mixtral": _mixtral_specs, "llama": _decoder_specs, "qwen3": _decoder_specs,
          "qwen3_moe": _decoder_specs}


def tensor_specs(preset: Preset) -> list[Spec]:
    """Every tensor of the preset's checkpoint, in checkpoint layout."""
    return _SPECS[preset.arch](preset)


def make_tensor(shape: tuple[int, ...], init: str, dtype: torch.dtype,
                rand: Callable[[tuple[int, ...]], torch.Tensor]) -> torch.Tensor:
    """One spec's tensor: ``rand(shape)`` (the caller's random values) cast to ``dtype``, or ones / zeros."""
    import torch
    if init == "rand":
        return rand(shape).to(dtype)
    return (torch.ones if init == "ones" else torch.zeros)(shape, dtype=dtype)


def _write_weights(preset: Preset, out: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, preset.dtype)
    tensors = {name: make_tensor(shape, init, dtype, lambda shape: torch.randn(*shape, generator=gen) * 0.02)
               for name, shape, init in tensor_specs(preset)}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def make_model(preset_name: str, out: Path, seed: int = 0) -> Path:
    """Write a model of ``preset_name`` into ``out`` (atomically): config.json and a
    tokenizer, plus random weights unless the preset is ``dummy`` (vLLM makes them)."""
    preset = PRESETS[preset_name]
    out = Path(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _train_tokenizer(preset.tokenizer_vocab, tmp)
    if not preset.dummy:
        _write_weights(preset, tmp, seed)
    config = preset.config()
    config["bench_pause"] = {"preset": preset.name, "revision": PRESET_REVISION, "seed": seed,
                             "load_format": "dummy" if preset.dummy else "safetensors"}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}))
    try:
        tmp.rename(out)
    except OSError:  # another process finished the same model first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def cache_dir() -> Path:
    """Where generated models live: $BENCH_PAUSE_CACHE, else the user's cache directory."""
    if os.environ.get("BENCH_PAUSE_CACHE"):
        return Path(os.environ["BENCH_PAUSE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bench-pause"


def cached_preset(preset_name: str) -> Path:
    """The preset's model in the user's cache, built on first use."""
    path = cache_dir() / "models" / f"{preset_name}-r{PRESET_REVISION}"
    if not (path / "config.json").exists():
        make_model(preset_name, path)
    return path


def hf_cached(repo: str) -> bool:
    """Whether ``repo`` can be loaded from the local Hugging Face cache (no download)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo, "config.json")
    return isinstance(found, str)


def load_format(model_dir: str) -> str | None:
    """``dummy`` for a preset written without weights (vLLM must make them), else None."""
    config = Path(model_dir) / "config.json"
    try:
        info = json.loads(config.read_text()).get("bench_pause", {})
    except (OSError, ValueError):
        return None
    return "dummy" if info.get("load_format") == "dummy" else None


# The GPU default by memory: the MoE shape RL deployments run where it fits (61 GB of
# weights: an 80 GB card), else the dense 8B shape, else the small OPT.
GPU_DEFAULTS = ((75, "qwen3-30b-a3b"), (24, "qwen3-8b"), (0, "opt-125m"))


def default_preset(on_gpu: bool, gpu_memory_gib: float = 0.0) -> str:
    if not on_gpu:
        return "tiny"
    return next(name for need, name in GPU_DEFAULTS if gpu_memory_gib >= need)


def default_model(on_gpu: bool, gpu_memory_gib: float = 0.0) -> str:
    """The preset that suits this host, built into the cache on first use."""
    return str(cached_preset(default_preset(on_gpu, gpu_memory_gib)))


_HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def presets_help() -> str:
    return ", ".join(PRESETS)


def resolve_model(model: str) -> str:
    """A local model directory (made absolute), a preset name (its generated model) or a
    Hugging Face id that can be loaded; ScenarioError for anything else."""
    from bench_pause.scenario import ScenarioError
    path = Path(model).expanduser()
    if path.exists():
        return str(path.absolute())
    if model in PRESETS:  # a generated model, built into the cache on first use
        return str(cached_preset(model))
    if model.startswith((".", "~", "/")) or model.count("/") > 1:
        raise ScenarioError(f"model directory {model} does not exist (or give a preset: {presets_help()})")
    if not _HF_ID.match(model):
        raise ScenarioError(
            f"no model {model!r}: give a preset ({presets_help()}), a local model directory "
            "or a Hugging Face id (org/name) that is in the local cache or can be downloaded")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not hf_cached(model):
        raise ScenarioError(f"model {model} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                            f"a preset needs no download: {presets_help()}")
    return model
