"""The trainer's side of a weight sync: two full weight sets whose greedy token is known.

A ``weight_sync`` cycle pushes a complete set of the model's weights into the running
engine and must tell which weights made every token. Each set here is the model's own
checkpoint with its output changed so that greedy decoding emits tokens of the set's own,
whatever the prompt and the rest of the network:

- a LayerNorm with a bias (OPT): weight 0, bias ``±e_d``. The head's input is then the
  constant ``±e_d``, so every logit is ``±E[i, d]`` (OPT's head is its embedding ``E``) and
  greedy decoding emits ``argmax`` (``+``) or ``argmin`` (``-``) of column ``d``, always.
- an RMSNorm model (Llama, Qwen3, Mixtral and their MoE): the head is 0 but for row ``a``
  (all ``+1``) and row ``b`` (all ``-1``), so the logits are ``s``, ``-s`` and 0 with ``s``
  the sum of the head's input: greedy emits ``a`` or ``b``. (Keeping one coordinate of the
  input instead, through the norm's weight, failed once in 560 tokens: a bf16 coordinate
  that cancels to exactly 0 makes every logit 0, and greedy takes token 0. A sum over the
  whole hidden size does not cancel exactly.)

Every other tensor is the checkpoint's, so the push moves the model's full size. Set A
and set B use different tokens, so a token tells which set made it (metrics.weight_sync).
``python -m bench_pause.trainer MODEL_DIR OUT_DIR`` stages both sets as safetensors files in
``OUT_DIR`` (the engine's workers read them: see transfer_worker) and prints them as JSON:
it runs as its own process, as a trainer does. The tensors both sets share are written
once, so staging needs the model's size once, not twice.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from bench_pause.weight_sync import WeightSet

SET_NAMES = ("A", "B")
# The last normalisation and the LM head, by checkpoint layout.
_OPT = ("model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias",
        "model.decoder.embed_tokens.weight")
_RMS = ("model.norm.weight", "lm_head.weight")


Changed = dict[str, torch.Tensor]
_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _opt_sets(tensors: dict[str, torch.Tensor]) -> list[tuple[Changed, tuple[int, ...]]]:
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


def _rms_sets(tensors: dict[str, torch.Tensor]) -> list[tuple[Changed, tuple[int, ...]]]:
    _, head_name = _RMS
    head = tensors[head_name]
    sets = []
    # Low ids other than the specials (0-3) that every generated tokenizer has.
    for a, b in ((4, 5), (6, 7)):
        h = torch.zeros_like(head)
        h[a], h[b] = 1, -1
        sets.append(({head_name: h}, (a, b)))
    return sets


def _marker(names: set[str]) -> tuple[str, ...]:
    """The tensors the marker reads, by layout; ValueError for a layout it does not know."""
    for needed in (_OPT, _RMS):
        if set(needed) <= names:
            return needed
    raise ValueError("no marker for this checkpoint (neither OPT's final_layer_norm "
                     "nor a model.norm with an untied lm_head)")


def marked_sets(tensors: dict[str, torch.Tensor]) -> list[tuple[Changed, tuple[int, ...]]]:
    """The two marked sets: for each, the tensors it changes (every other is the
    checkpoint's) and the tokens greedy decoding can emit with it."""
    return _opt_sets(tensors) if _marker(set(tensors)) == _OPT else _rms_sets(tensors)


class Source:
    """A checkpoint's tensors, read on demand: its safetensors files, or for a preset that
    has none (vLLM makes its weights: ``dummy``) tensors of the preset's exact layout made
    here, small uniform values (what a push moves is bytes; the marker fixes the tokens)."""

    def __init__(self, model_dir: str) -> None:
        if not Path(model_dir).is_dir():
            raise ValueError(f"{model_dir} is no local directory: the trainer reads the weights it pushes from "
                             "one (give a preset or a downloaded model's directory)")
        self.files = sorted(Path(model_dir).glob("*.safetensors"))
        self.specs: dict[str, tuple[tuple[int, ...], str]] = {}
        self.dtype = torch.bfloat16
        self.where: dict[str, Path] = {}
        self.nbytes: dict[str, int] = {}
        if self.files:
            from safetensors import safe_open
            for f in self.files:
                with safe_open(str(f), framework="pt") as handle:
                    for k in handle.keys():
                        piece = handle.get_slice(k)
                        self.where[k] = f
                        self.nbytes[k] = math.prod(piece.get_shape()) * _ITEMSIZE.get(piece.get_dtype(), 4)
            self.names = list(self.where)
            return
        from bench_pause.model import PRESETS, load_format, tensor_specs
        try:
            preset = json.loads((Path(model_dir) / "config.json").read_text())["bench_pause"]["preset"]
        except (OSError, ValueError, KeyError):
            preset = None
        if load_format(model_dir) != "dummy" or preset not in PRESETS:
            raise ValueError(f"{model_dir} has no *.safetensors weights to push, and is no bench-pause preset")
        self.dtype = getattr(torch, PRESETS[preset].dtype)
        self.specs = {name: (shape, init) for name, shape, init in tensor_specs(PRESETS[preset])}
        self.nbytes = {name: math.prod(shape) * self.dtype.itemsize for name, (shape, _) in self.specs.items()}
        self.names = list(self.specs)

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        if not self.specs:
            from safetensors import safe_open
            out = {}
            for f in self.files:
                wanted = [n for n in names if self.where[n] == f]
                if wanted:
                    with safe_open(str(f), framework="pt") as handle:
                        out.update({n: handle.get_tensor(n) for n in wanted})
            return out
        from bench_pause.model import make_tensor

        def rand(shape: tuple[int, ...]) -> torch.Tensor:  # uniform: fast enough for 30 B parameters
            return torch.empty(shape, dtype=self.dtype).uniform_(-0.02, 0.02)
        return {n: make_tensor(*self.specs[n], self.dtype, rand) for n in names}


def check(model_dir: str) -> None:
    """Whether ``model_dir`` holds (or names) a checkpoint this module can mark, cheaply:
    names only. ValueError with the reason."""
    _marker(set(Source(model_dir).names))


def _save(tensors: dict[str, torch.Tensor], path: Path) -> int:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def stage(model_dir: Path, out: Path, chunk_bytes: int = 2 << 30) -> list[WeightSet]:
    """Write into ``out`` the tensors both sets share, in files of about ``chunk_bytes``
    (each is one ``update_weights`` call, as trainers push in buckets), then each set's own
    tensors; returns the sets. Peak memory is one chunk, not the model."""
    out.mkdir(parents=True, exist_ok=True)
    source = Source(str(model_dir))
    read = _marker(set(source.names))
    marked = marked_sets(source.load(list(read)))
    changed = set(marked[0][0])
    common, chunk, size, shared = [], [], 0, 0

    def flush() -> None:
        nonlocal chunk, size, shared
        if chunk:
            path = out / f"common-{len(common):03d}.safetensors"
            shared += _save(source.load(chunk), path)
            common.append(str(path))
        chunk, size = [], 0

    for name in source.names:
        if name in changed:
            continue
        chunk.append(name)
        size += source.nbytes[name]
        if size >= chunk_bytes:
            flush()
    flush()
    sets = []
    for name, (tensors, tokens) in zip(SET_NAMES, marked):
        path = out / f"{name}.safetensors"
        own = _save(tensors, path)
        sets.append(WeightSet(name, (*common, str(path)), tokens, shared + own))
    return sets


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
