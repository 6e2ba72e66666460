"""The trainer's side of a weight sync: two full weight sets whose greedy token is known.

A ``weight_sync`` cycle pushes a complete set of the model's weights into the running
engine and must tell which weights made every token. Each set here is the model's own
checkpoint with its last normalisation and LM head changed so that the head's input
carries one coordinate ``d`` only, whatever the prompt and the rest of the network:

- a LayerNorm with a bias (OPT): weight 0, bias ``±e_d``. The head's input is then the
  constant ``±e_d``, so every logit is ``±E[i, d]`` (OPT's head is its embedding ``E``) and
  greedy decoding emits ``argmax`` (``+``) or ``argmin`` (``-``) of column ``d``, always.
- an RMSNorm (Llama, Qwen3, Mixtral and their MoE): weight ``e_d``, so the head's input is
  ``s * e_d`` with ``s`` of either sign; the head's column ``d`` is 0 except ``+1`` at token
  ``a`` and ``-1`` at token ``b``: greedy emits ``a`` or ``b``.

Every other tensor is the checkpoint's, so the push moves the model's full size. Set A
and set B use different tokens, so a token tells which set made it (metrics.weight_sync).
``python -m bench_pause.trainer MODEL_DIR OUT_DIR`` stages both sets as safetensors files in
``OUT_DIR`` (the engine's workers read them: see transfer_worker) and prints them as JSON:
it runs as its own process, as a trainer does.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SET_NAMES = ("A", "B")
# The last normalisation and the LM head, by checkpoint layout.
_OPT = ("model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias",
        "model.decoder.embed_tokens.weight")
_RMS = ("model.norm.weight", "lm_head.weight")


@dataclass(frozen=True)
class WeightSet:
    """One staged set: where its file is, the tokens greedy decoding can emit with it,
    and the bytes a push moves."""

    name: str
    path: str
    tokens: tuple[int, ...]
    bytes: int


def _opt_sets(tensors: dict[str, torch.Tensor]) -> list[tuple[dict, tuple[int, ...]]]:
    w_name, b_name, e_name = _OPT
    emb = tensors[e_name].float()
    # The column whose maximum and minimum are each taken by one token: no tie to break.
    for d in range(emb.shape[1]):
        col = emb[:, d]
        top, low = (col == col.max()).nonzero().flatten(), (col == col.min()).nonzero().flatten()
        if len(top) == 1 and len(low) == 1:
            break
    else:
        raise ValueError("every embedding column has a tied maximum or minimum: no marker column")
    sets = []
    for sign, token in ((1.0, int(top[0])), (-1.0, int(low[0]))):
        bias = torch.zeros_like(tensors[b_name])
        bias[d] = sign
        sets.append(({w_name: torch.zeros_like(tensors[w_name]), b_name: bias}, (token,)))
    return sets


def _rms_sets(tensors: dict[str, torch.Tensor]) -> list[tuple[dict, tuple[int, ...]]]:
    norm_name, head_name = _RMS
    norm, head = tensors[norm_name], tensors[head_name]
    d = 0
    weight = torch.zeros_like(norm)
    weight[d] = 1
    sets = []
    # Low ids other than the specials (0-3) that every generated tokenizer has.
    for a, b in ((4, 5), (6, 7)):
        h = head.clone()
        h[:, d] = 0
        h[a, d], h[b, d] = 1, -1
        sets.append(({norm_name: weight, head_name: h}, (a, b)))
    return sets


def marked_sets(tensors: dict[str, torch.Tensor]) -> list[tuple[dict[str, torch.Tensor], tuple[int, ...]]]:
    """The two marked sets of a checkpoint: for each, the full tensor dict and the tokens
    greedy decoding can emit with it. ValueError for a layout it does not know."""
    if all(k in tensors for k in _OPT):
        sets = _opt_sets(tensors)
    elif all(k in tensors for k in _RMS):
        sets = _rms_sets(tensors)
    else:
        raise ValueError("no marker for this checkpoint (neither OPT's final_layer_norm "
                         "nor a model.norm with an untied lm_head)")
    return [({**tensors, **changed}, tokens) for changed, tokens in sets]


def check(model_dir: str) -> None:
    """Whether ``model_dir`` has weight files this module can mark (names only, cheap);
    ValueError with the reason."""
    from safetensors import safe_open
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} has no *.safetensors weights to push (a dummy preset has none)")
    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            names.update(handle.keys())
    if not (set(_OPT) <= names or set(_RMS) <= names):
        raise ValueError(f"{model_dir}: no marker for this checkpoint (neither OPT's final_layer_norm "
                         "nor a model.norm with an untied lm_head)")


def load_checkpoint(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    check(str(model_dir))
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def stage(model_dir: Path, out: Path) -> list[WeightSet]:
    """Write set A and set B into ``out``; returns what was written."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    staged = []
    for name, (tensors, tokens) in zip(SET_NAMES, marked_sets(load_checkpoint(model_dir))):
        path = out / f"{name}.safetensors"
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        save_file(tensors, str(path), metadata={"format": "pt"})
        staged.append(WeightSet(name, str(path), tokens, sum(t.numel() * t.element_size() for t in tensors.values())))
    return staged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench_pause.trainer", description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    try:
        sets = stage(args.model_dir, args.out)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps([asdict(s) for s in sets]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
