"""Generated models and the engine flags they start with.

The Mixtral preset is a checkpoint transformers loads in full: vLLM's CPU backend cannot
run MoE models (FACTS.md), so it is checked by loading it with transformers (every tensor
matched, none left over) and running a forward pass. The production-shape presets write no
weights (vLLM makes them: --load-format dummy); their shapes are checked here, and the
dummy path runs on a real CPU engine in test_cli.py.
"""

from __future__ import annotations

import json

from bench_pause import model


def test_moe_preset_is_a_complete_mixtral(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = model.make_model("tiny-moe", tmp_path / "moe")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"]
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (8, 2)
    loaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        logits = loaded(torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3, config["vocab_size"]) and torch.isfinite(logits).all()


def test_a_preset_name_is_a_model(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_PAUSE_CACHE", str(tmp_path))
    path = model.resolve_model("tiny")
    assert path.startswith(str(tmp_path)) and json.loads(open(f"{path}/config.json").read())["model_type"] == "opt"


def test_production_presets_have_their_real_shapes_and_no_weight_files(tmp_path):
    out = model.make_model("qwen3-30b-a3b", tmp_path / "moe")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3MoeForCausalLM"]
    shape = {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_experts", "num_experts_per_tok",
                                    "moe_intermediate_size", "num_attention_heads", "num_key_value_heads",
                                    "head_dim", "vocab_size")}
    assert shape == {"num_hidden_layers": 48, "hidden_size": 2048, "num_experts": 128, "num_experts_per_tok": 8,
                     "moe_intermediate_size": 768, "num_attention_heads": 32, "num_key_value_heads": 4,
                     "head_dim": 128, "vocab_size": 151936}
    assert not list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    assert model.load_format(str(out)) == "dummy"
    # Every id the generated tokenizer makes is below the model's vocab.
    from transformers import AutoTokenizer
    ids = AutoTokenizer.from_pretrained(out)("kalo mine ruvel.")["input_ids"]
    assert ids and max(ids) < model.PRESETS["qwen3-30b-a3b"].tokenizer_vocab <= config["vocab_size"]
    dense = model.PRESETS["qwen3-8b"].config()
    assert (dense["num_hidden_layers"], dense["hidden_size"], dense["intermediate_size"]) == (36, 4096, 12288)
    assert model.load_format(str(model.make_model("tiny", tmp_path / "tiny"))) is None


def test_the_gpu_default_is_the_largest_preset_that_fits():
    assert model.default_preset(on_gpu=False) == "tiny"
    assert model.default_preset(on_gpu=True, gpu_memory_gib=79.1) == "qwen3-30b-a3b"
    assert model.default_preset(on_gpu=True, gpu_memory_gib=40) == "qwen3-8b"
    assert model.default_preset(on_gpu=True, gpu_memory_gib=16) == "opt-125m"


def test_effective_engine_flags_have_no_contradictory_pair(tmp_path):
    from bench_pause import vllm_compat
    dummy = str(model.make_model("tiny-qwen3", tmp_path / "q"))
    cpu = vllm_compat.engine_config(dummy, ["--no-enforce-eager", "--max-model-len 1024"], gpu=False)
    assert cpu.args == ("--seed", "0", "--gpu-memory-utilization", "0.08", "--load-format", "dummy",
                        "--no-enforce-eager", "--max-model-len", "1024")
    gpu = vllm_compat.engine_config(dummy, "", gpu=True)
    assert gpu.args == ("--seed", "0", "--load-format", "dummy") and gpu.summary()["execution"] == "CUDA graphs"
    eager = vllm_compat.engine_config(dummy, ["--enforce-eager", "--load-format=auto"], gpu=True)
    assert eager.args == ("--seed", "0", "--enforce-eager", "--load-format=auto")
    assert eager.summary()["execution"] == "eager" and eager.summary()["load_format"] == "auto"
