"""Is a CUDA-IPC buffer freed once both sides drop it? The torch-level question behind the
weight_sync finding that vLLM 0.26.0's packed IPC leaves one buffer per push allocated in
the trainer (docs/findings.md).

A producer allocates a 1 GiB buffer, shares it with ``reduce_tensor`` (what vLLM's packed
sender does), a consumer process rebuilds it with ``rebuild_cuda_tensor``, clones a slice
and drops it (what vLLM's ``packed_ipc_consumer`` does); the producer drops its buffer and
calls ``torch.cuda.ipc_collect()``. Five rounds; prints the producer's allocated GiB after
each. Then the same with the consumer rebuilding the buffer three times per round, as
vLLM's worker does for every chunk of a packed push, shared once or anew per rebuild.
Growth by 1 GiB a round means torch keeps the block. On an H100 (torch 2.11.0+cu130): no
growth with one rebuild, 1 GiB a round with three, either way of sharing
(results/gpu-h100-v0.26.0-ipc-leak-check). Run: python3 tools/ipc-leak-check.py (a CUDA GPU).
"""

from __future__ import annotations

import torch
import torch.multiprocessing as mp
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor


def consumer(inbox: "mp.Queue", outbox: "mp.Queue") -> None:
    while (args := inbox.get()) is not None:
        shared = rebuild_cuda_tensor(*args)
        copy = shared[: 1 << 20].clone()
        del shared, copy
        torch.cuda.synchronize()
        outbox.put("released")


def rounds(count: int, rebuilds: int = 1, share_per_rebuild: bool = False) -> None:
    """``count`` rounds of: allocate a 1 GiB buffer, share it, let the consumer rebuild it
    ``rebuilds`` times (as vLLM's worker rebuilds the packed buffer for every chunk of a
    push, the producer collecting after each, as vLLM's sender does), drop it, collect;
    ``share_per_rebuild``: ``reduce_tensor`` again before every rebuild (a candidate fix).
    Prints the producer's allocated GiB after each round and once the consumer is gone."""
    label = "" if rebuilds == 1 else f"{rebuilds} rebuilds, shared {'per chunk' if share_per_rebuild else 'once'}, "
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=consumer, args=(inbox, outbox))
    proc.start()
    try:
        for round_ in range(count):
            buffer = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
            _, args = reduce_tensor(buffer)
            for _ in range(rebuilds):
                if share_per_rebuild:
                    _, args = reduce_tensor(buffer)
                inbox.put(args)
                outbox.get(timeout=120)
                if rebuilds > 1:
                    torch.cuda.ipc_collect()
            del buffer
            torch.cuda.ipc_collect()
            print(f"{label}round {round_}: producer allocated {torch.cuda.memory_allocated() / 2**30:.2f} GiB")
    finally:
        inbox.put(None)
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    torch.cuda.ipc_collect()
    print(f"{label}consumer gone: producer allocated {torch.cuda.memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    rounds(5)
    rounds(3, rebuilds=3)
    rounds(3, rebuilds=3, share_per_rebuild=True)
