"""Generated models: the MoE preset is a Mixtral checkpoint transformers loads in full.

vLLM's CPU backend cannot run MoE models (FACTS.md), so the preset is checked here by
loading it with transformers (every tensor matched, none left over) and running a forward
pass; the dense presets are loaded by vLLM in every engine test.
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
    from bench_pause.sweep import resolve_model
    monkeypatch.setenv("BENCH_PAUSE_CACHE", str(tmp_path))
    path = resolve_model("tiny")
    assert path.startswith(str(tmp_path)) and json.loads(open(f"{path}/config.json").read())["model_type"] == "opt"
