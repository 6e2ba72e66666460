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
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Bump when a preset's files change, so cached copies are rebuilt.
PRESET_REVISION = 1
HF_OPT_125M = "facebook/opt-125m"


@dataclass(frozen=True)
class Preset:
    """The shape of a generated model: OPT (dense) or Mixtral (MoE) layout."""

    name: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    dtype: str
    experts: int = 0  # > 0: a Mixtral with this many experts per layer
    top_k: int = 2

    def config(self) -> dict:
        return self._mixtral_config() if self.experts else self._opt_config()

    def _opt_config(self) -> dict:
        return {
            "architectures": ["OPTForCausalLM"],
            "model_type": "opt",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "word_embed_proj_dim": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "ffn_dim": self.ffn,
            "max_position_embeddings": self.max_positions,
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
            "torch_dtype": self.dtype,
            "use_cache": True,
        }

    def _mixtral_config(self) -> dict:
        return {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.heads,
            "num_local_experts": self.experts,
            "num_experts_per_tok": self.top_k,
            "max_position_embeddings": self.max_positions,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "router_aux_loss_coef": 0.0,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 2,
            "torch_dtype": self.dtype,
            "use_cache": True,
        }


PRESETS = {
    # Small enough for a 2-core CPU; head_dim 64 because vLLM's CPU attention rejects 16.
    "tiny": Preset("tiny", layers=2, hidden=128, heads=2, ffn=512, vocab=2000,
                   max_positions=2048, dtype="bfloat16"),
    # OPT-125m's exact shape.
    "opt-125m": Preset("opt-125m", layers=12, hidden=768, heads=12, ffn=3072, vocab=50272,
                       max_positions=2048, dtype="float16"),
    # The tiny Mixtral of FACTS.md (4 layers, hidden 512, 8 heads, 8 experts, top-2): the
    # MoE path (and its resume stall) on a GPU. vLLM's CPU backend cannot run MoE models.
    "tiny-moe": Preset("tiny-moe", layers=4, hidden=512, heads=8, ffn=1024, vocab=8192,
                       max_positions=4096, dtype="bfloat16", experts=8, top_k=2),
}

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


def _opt_tensors(preset: Preset, rand: Callable[..., "torch.Tensor"], ones: Callable, zeros: Callable) -> dict:
    h, f = preset.hidden, preset.ffn
    tensors = {
        "model.decoder.embed_tokens.weight": rand(preset.vocab, h),
        # OPT's learned positions are offset by 2.
        "model.decoder.embed_positions.weight": rand(preset.max_positions + 2, h),
        "model.decoder.final_layer_norm.weight": ones(h),
        "model.decoder.final_layer_norm.bias": zeros(h),
    }
    for i in range(preset.layers):
        p = f"model.decoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            tensors[p + f"self_attn.{proj}.weight"] = rand(h, h)
            tensors[p + f"self_attn.{proj}.bias"] = zeros(h)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            tensors[p + f"{ln}.weight"] = ones(h)
            tensors[p + f"{ln}.bias"] = zeros(h)
        tensors[p + "fc1.weight"], tensors[p + "fc1.bias"] = rand(f, h), zeros(f)
        tensors[p + "fc2.weight"], tensors[p + "fc2.bias"] = rand(h, f), zeros(h)
    return tensors


def _mixtral_tensors(preset: Preset, rand: Callable[..., "torch.Tensor"], ones: Callable, zeros: Callable) -> dict:
    """The classic Mixtral checkpoint layout (block_sparse_moe.experts.J.w1/w2/w3)."""
    h, f = preset.hidden, preset.ffn
    tensors = {"model.embed_tokens.weight": rand(preset.vocab, h), "model.norm.weight": ones(h),
               "lm_head.weight": rand(preset.vocab, h)}
    for i in range(preset.layers):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[p + f"self_attn.{proj}.weight"] = rand(h, h)
        tensors[p + "input_layernorm.weight"] = ones(h)
        tensors[p + "post_attention_layernorm.weight"] = ones(h)
        tensors[p + "block_sparse_moe.gate.weight"] = rand(preset.experts, h)
        for j in range(preset.experts):
            e = p + f"block_sparse_moe.experts.{j}."
            tensors[e + "w1.weight"], tensors[e + "w3.weight"], tensors[e + "w2.weight"] = \
                rand(f, h), rand(f, h), rand(h, f)
    return tensors


def _write_weights(preset: Preset, out: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, preset.dtype)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).to(dtype)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=dtype)

    def zeros(n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=dtype)

    build = _mixtral_tensors if preset.experts else _opt_tensors
    save_file(build(preset, rand, ones, zeros), str(out / "model.safetensors"), metadata={"format": "pt"})


def make_model(preset_name: str, out: Path, seed: int = 0) -> Path:
    """Write a random-weights model of ``preset_name`` into ``out`` (atomically)."""
    preset = PRESETS[preset_name]
    out = Path(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _train_tokenizer(preset.vocab, tmp)
    _write_weights(preset, tmp, seed)
    config = preset.config()
    config["bench_pause"] = {"preset": preset.name, "revision": PRESET_REVISION, "seed": seed}
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


def default_model(on_gpu: bool) -> str:
    """facebook/opt-125m when the GPU host has it cached, else a generated preset."""
    if on_gpu:
        return HF_OPT_125M if hf_cached(HF_OPT_125M) else str(cached_preset("opt-125m"))
    return str(cached_preset("tiny"))
