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
The trainer runs as its own process, as a trainer does, in one of two ways:

- ``python -m bench_pause.trainer MODEL_DIR OUT_DIR`` stages both sets as safetensors files
  in ``OUT_DIR`` (``bench_shm``: the engine's workers read them, see transfer_worker) and
  prints them as JSON. The tensors both sets share are written once.
- ``python -m bench_pause.trainer MODEL_DIR --serve ipc|ipc_packed [--host-memory]`` (a
  CUDA GPU, the engine's): holds both sets on the GPU (shared tensors once), or packed
  from pinned host memory where the GPU has no room for them beside the engine (as a
  trainer that offloads its parameters), prints them as one JSON line, then answers ``{"send": i}`` lines by running vLLM's own
  IPC sender for set ``i`` (its trainer factory's engine, ``send_weights``; before that API,
  ``IPCWeightTransferEngine.trainer_send_weights``), unpacked (one update with a CUDA-IPC
  handle per tensor) or packed (vLLM's 1 GB buffers, one update each). Each update it
  would send is written as ``{"update": info}`` for the client to pass to the engine's
  ``update_weights``; the trainer waits for ``ok`` before it goes on (a packed buffer is
  reused), then says ``{"done": i, ...}`` with its GPU memory after the push. The
  engine's init, start and finish calls are the client's, as the update's are: vLLM's
  trainer engine makes them through a client object, and here that object relays (_Relay).
- ``python -m bench_pause.trainer MODEL_DIR --serve nccl|nccl_packed`` (a GPU of its own,
  not the engine's): holds both sets there the same way; an ``{"init": info}`` line joins
  a new NCCL group with an engine's workers as rank 0 (vLLM's ``trainer_init``, while the
  client has the engine join: ``{"joined": world_size}``), and ``{"send": i}`` writes the
  one update the engine must receive with (``"collective": true``: the client calls it
  now, without waiting) and broadcasts set ``i`` with vLLM's NCCL sender (its trainer
  factory's engine from 0.28; ``NCCLWeightTransferEngine.trainer_send_weights`` before),
  one tensor at a time or packed.

Protocol lines go to the process's stdout and everything else (vLLM's log) to stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import pickle
import sys
from collections.abc import Iterator
from typing import IO
from dataclasses import asdict
from pathlib import Path

import torch

from bench_pause.weight_sync import PACKED_BUFFER_BYTES, PACKED_NUM_BUFFERS, WeightSet

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

    def load(self, names: list[str], device: str = "cpu") -> dict[str, torch.Tensor]:
        """The named tensors, made or read straight onto ``device``."""
        if not self.specs:
            from safetensors import safe_open
            out = {}
            for f in self.files:
                wanted = [n for n in names if self.where[n] == f]
                if wanted:
                    with safe_open(str(f), framework="pt", device=device) as handle:
                        out.update({n: handle.get_tensor(n) for n in wanted})
            return out
        from bench_pause.model import make_tensor

        def rand(shape: tuple[int, ...]) -> torch.Tensor:  # uniform: fast enough for 30 B parameters
            return torch.empty(shape, dtype=self.dtype, device=device).uniform_(-0.02, 0.02)
        return {n: make_tensor(*self.specs[n], self.dtype, rand).to(device) for n in names}

    def chunks(self, names: list[str], chunk_bytes: int) -> Iterator[list[str]]:
        """``names`` in order, in runs of about ``chunk_bytes``."""
        chunk, size = [], 0
        for name in names:
            chunk.append(name)
            size += self.nbytes[name]
            if size >= chunk_bytes:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk


def check(model_dir: str) -> int:
    """Whether ``model_dir`` holds (or names) a checkpoint this module can mark, cheaply:
    names only. ValueError with the reason; else the bytes both sets take on the trainer's
    device (the shared tensors once, the changed ones twice)."""
    source = Source(model_dir)
    read = _marker(set(source.names))
    changed = read[:2] if read == _OPT else read[1:]  # the norm (OPT), the head (RMS): what marked_sets replaces
    return sum(source.nbytes.values()) + sum(source.nbytes[n] for n in changed)


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
    common, shared = [], 0
    for chunk in source.chunks([n for n in source.names if n not in changed], chunk_bytes):
        path = out / f"common-{len(common):03d}.safetensors"
        shared += _save(source.load(chunk), path)
        common.append(str(path))
    sets = []
    for name, (tensors, tokens) in zip(SET_NAMES, marked):
        path = out / f"{name}.safetensors"
        own = _save(tensors, path)
        sets.append(WeightSet(name, (*common, str(path)), tokens, shared + own))
    return sets


def _pinned(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies in one pinned host buffer (one allocation: torch's pinned allocator rounds
    each up to a power of two), from which CUDA copies at full speed."""
    def padded(t: torch.Tensor) -> int:
        return -(-t.numel() * t.element_size() // 64) * 64
    buf = torch.empty(sum(padded(t) for t in tensors.values()), dtype=torch.uint8, pin_memory=True)
    out, offset = {}, 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        out[name] = buf[offset:offset + size].view(t.dtype).view(t.shape)
        out[name].copy_(t)
        offset += padded(t)
    return out


def _say(out: IO[str], message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _hold(model_dir: Path, host: bool, out: IO[str]) -> list[list[tuple[str, torch.Tensor]]]:
    """Both sets on this process's CUDA device (or in pinned host memory: ``host``), each
    as its tensors in push order (the shared ones held once); says so on ``out``."""
    gpu = f"cuda:{torch.cuda.current_device()}"
    keep = _pinned if host else (lambda tensors: tensors)
    source = Source(str(model_dir))
    marked = [(keep(tensors), tokens) for tensors, tokens in marked_sets(source.load(list(_marker(set(source.names))), gpu))]
    changed = set(marked[0][0])
    shared = {}
    for chunk in source.chunks([n for n in source.names if n not in changed], 2 << 30):
        shared.update(keep(source.load(chunk, gpu)))  # made on the GPU (fast), kept in host memory where asked
    ordered = [[(n, tensors.get(n, shared.get(n))) for n in source.names] for tensors, _ in marked]
    sets = [WeightSet(name, (), tokens, sum(t.numel() * t.element_size() for _, t in order))
            for name, (_, tokens), order in zip(SET_NAMES, marked, ordered)]
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # what marking read and dropped: the engine starts beside what remains
    free, total = torch.cuda.mem_get_info()
    _say(out, {"sets": [asdict(s) for s in sets], "device_bytes": torch.cuda.memory_allocated(),
               "free": free, "total": total})
    return ordered


def _pushed(index: int) -> dict:
    """What the trainer holds on the GPU after a push (its sets included where they live
    there), before and after asking torch to free IPC-shared blocks the engine has
    released: a packed buffer that stays allocated after every push is a leak a long
    training run pays."""
    held = torch.cuda.memory_allocated()
    torch.cuda.ipc_collect()
    return {"done": index, "gpu_bytes": held, "gpu_bytes_collected": torch.cuda.memory_allocated()}


class _Relay:
    """vLLM's trainer-side client (``VLLMWeightSyncClient``, releases with the trainer
    factory) for a trainer whose engine calls are made by the measuring client: each update
    goes over ``out`` for the client to pass to the engine's ``update_weights``, after which
    it answers ``ok`` on ``inp`` (a collective one, NCCL's, is not waited for: the engine
    receives while this process broadcasts). Init, start and finish are the client's own
    calls, timed there (weight_sync.attach and push), so here they do nothing."""

    def __init__(self, out: IO[str], inp: IO[str], collective: bool) -> None:
        self.out, self.inp, self.collective = out, inp, collective

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        pass

    def start_weight_update(self) -> None:
        pass

    def update_weights(self, update_info: dict) -> None:
        info = {k: v for k, v in update_info.items() if v is not None}
        handles = info.pop("ipc_handles", None)
        if handles is not None:  # pickled as vLLM's HTTP client does; the engine's side unpickles
            info["ipc_handles_pickled"] = base64.b64encode(pickle.dumps(handles)).decode()
        _say(self.out, {"collective": True, "update": info} if self.collective else {"update": info})
        if not self.collective and self.inp.readline().strip() != "ok":
            raise RuntimeError("the client did not confirm the update")

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        pass


def _sets_source(ordered: list[list[tuple[str, torch.Tensor]]]) -> object:
    """Both held sets as one vLLM ``WeightSource`` (the trainer factory's input): the
    sets share every name, shape and dtype, so ``metadata`` is one, and iteration yields the
    set ``index`` names. ``metadata`` is a cached property (0.33 and later; 0.28-0.32 call
    it, hence a list that returns itself when called); iteration is ``iter_full`` (0.33 and
    later) and ``__iter__`` (before)."""
    from functools import cached_property
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class Metadata(list):
        def __call__(self) -> "Metadata":
            return self

    class HeldSets(WeightSource):
        index = 0

        @cached_property
        def metadata(self) -> Metadata:
            return Metadata(ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in ordered[0])

        def iter_full(self) -> Iterator[tuple[str, torch.Tensor]]:
            return iter(ordered[self.index])

        __iter__ = iter_full

    return HeldSets()


def _factory_sender(init_info: object, relay: _Relay, ordered: list[list[tuple[str, torch.Tensor]]]):
    """vLLM's trainer engine over both sets (its trainer factory: IPC from 0.27, NCCL from 0.28), as a
    function that pushes set ``index``; vLLM's ``trainer_init`` joins the engine's NCCL group
    where the backend has one."""
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
    source = _sets_source(ordered)
    engine = WeightTransferTrainerFactory.trainer_init(init_info, client=relay, source=source)

    def send(index: int) -> None:
        source.index = index
        engine.send_weights()
    return send


def serve_ipc(ordered: list[list[tuple[str, torch.Tensor]]], packed: bool, out: IO[str], inp: IO[str]) -> None:
    """Push the asked set through vLLM's IPC trainer API, relaying each update over
    ``out``/``inp`` (the module's docstring)."""
    from bench_pause.transfer_worker import ipc_engine
    from bench_pause.vllm_compat import FACTORY_API, trainer_api
    ipc = ipc_engine()
    # vLLM's default packed buffer (1 GiB) refuses a larger tensor (Qwen3-8B's embedding is
    # 1.16 GiB): the buffer is the default or the largest tensor, whichever is larger.
    buffer = max(PACKED_BUFFER_BYTES, max(t.numel() * t.element_size() for order in ordered for _, t in order))
    relay = _Relay(out, inp, collective=False)
    if trainer_api("ipc") == FACTORY_API:
        send = _factory_sender(ipc.IPCTrainerInitInfo(rank=0, packed=packed, packed_buffer_size_bytes=buffer),
                               relay, ordered)
    else:
        args = ipc.IPCTrainerSendWeightsArgs(send_mode=lambda u: relay.update_weights(vars(u)), packed=packed,
                                             packed_buffer_size_bytes=buffer)
        send = lambda index: ipc.IPCWeightTransferEngine.trainer_send_weights(iter(ordered[index]), args)  # noqa: E731
    while line := inp.readline():
        index = int(json.loads(line)["send"])
        send(index)
        _say(out, _pushed(index))


def serve_nccl(ordered: list[list[tuple[str, torch.Tensor]]], packed: bool, out: IO[str], inp: IO[str]) -> None:
    """Join each engine's NCCL group and broadcast the asked set to it (the module's
    docstring); one group at a time, the last engine's."""
    from vllm.distributed.weight_transfer import nccl_engine
    from bench_pause.vllm_compat import FACTORY_API, trainer_api
    factory = trainer_api("nccl") == FACTORY_API
    relay = _Relay(out, inp, collective=True)
    group = None
    while line := inp.readline():
        message = json.loads(line)
        if "init" in message:
            group = None  # let the previous engine's group go first: that engine is gone
            rendezvous = {k: message["init"][k] for k in ("master_address", "master_port", "world_size")}
            if factory:
                group = _factory_sender(nccl_engine.NCCLTrainerInitInfo(
                    rank=0, **rendezvous, packed=packed, packed_buffer_size_bytes=PACKED_BUFFER_BYTES,
                    packed_num_buffers=PACKED_NUM_BUFFERS), relay, ordered)
            else:
                group = nccl_engine.NCCLWeightTransferEngine.trainer_init(message["init"])
            _say(out, {"joined": message["init"]["world_size"]})
            continue
        if group is None:
            raise RuntimeError("asked to push before joining an engine's group (init)")
        index = int(message["send"])
        tensors = ordered[index]
        if factory:
            group(index)  # relays the one update first, then broadcasts
        else:
            # The engine receives exactly these tensors in this order (vLLM's NCCLWeightTransferUpdateInfo).
            relay.update_weights({
                "names": [n for n, _ in tensors], "dtype_names": [str(t.dtype).removeprefix("torch.") for _, t in tensors],
                "shapes": [list(t.shape) for _, t in tensors], "packed": packed,
                "packed_buffer_size_bytes": PACKED_BUFFER_BYTES, "packed_num_buffers": PACKED_NUM_BUFFERS})
            nccl_engine.NCCLWeightTransferEngine.trainer_send_weights(iter(tensors), nccl_engine.NCCLTrainerSendWeightsArgs(
                group=group, packed=packed, packed_buffer_size_bytes=PACKED_BUFFER_BYTES,
                packed_num_buffers=PACKED_NUM_BUFFERS))
        torch.cuda.synchronize()  # the broadcast is queued on streams: done means received
        _say(out, _pushed(index))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench_pause.trainer", description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path, nargs="?", help="stage both sets here as files (bench_shm)")
    p.add_argument("--serve", choices=("ipc", "ipc_packed", "nccl", "nccl_packed"),
                   help="hold both sets on the GPU and push them through vLLM's CUDA IPC or NCCL on request")
    p.add_argument("--host-memory", action="store_true",
                   help="with --serve ipc_packed: hold the sets in pinned host memory, not on the GPU")
    p.add_argument("--device", type=int, default=0,
                   help="with --serve: the CUDA device (index) that holds the sets; NCCL: not the engine's")
    args = p.parse_args(argv)
    if (args.out is None) == (args.serve is None):
        p.error("give OUT (stage files) or --serve (push over CUDA IPC or NCCL), one of them")
    if args.host_memory and args.serve != "ipc_packed":
        p.error("--host-memory needs --serve ipc_packed (unpacked IPC shares GPU tensors)")
    if args.serve:
        # The protocol keeps the real stdout; whatever else prints (vLLM logs to stdout) goes to stderr.
        proto = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        try:
            if not torch.cuda.is_available():
                raise RuntimeError("no CUDA device here: --serve pushes from a CUDA GPU")
            torch.cuda.set_device(args.device)
            ordered = _hold(args.model_dir, args.host_memory, proto)
            serving = serve_nccl if args.serve.startswith("nccl") else serve_ipc
            serving(ordered, args.serve.endswith("_packed"), proto, sys.stdin)
        except Exception as exc:  # reported on the protocol, so the client says why
            _say(proto, {"error": f"{type(exc).__name__}: {exc}"})
            raise
        return 0
    try:
        sets = stage(args.model_dir, args.out)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps([asdict(s) for s in sets]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
