"""The HTTP backend: vLLM's OpenAI-compatible server, launched here or given by --url.

Streams ``/v1/completions`` with aiohttp and takes a timestamp as each SSE chunk
arrives. Token counts per chunk come from ``continuous_usage_stats`` (the cumulative
``completion_tokens``), never from counting chunks with text. Pause and resume go through
``POST /pause`` / ``POST /resume``, which exist only with ``VLLM_SERVER_DEV_MODE=1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from bench_pause import procs, vllm_compat
from bench_pause.backends.base import OnCount, Session, SessionInfo, StartupFailed, Timeouts
from bench_pause.scenario import ScenarioError
from bench_pause.trace import FINISH, PROMPT, REJECTED, SUBMIT, Trace
from bench_pause.vllm_compat import EngineConfig

LOG_TAIL_LINES = 25


def free_port() -> int:
    """A free loopback port; two sweeps at once each get their own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _token_ids(chunk: dict) -> list[int]:
    """The token ids of a completions chunk streamed with ``return_tokens_as_token_ids``."""
    out = []
    for choice in chunk.get("choices") or []:
        for token in (choice.get("logprobs") or {}).get("tokens") or []:
            if str(token).startswith("token_id:"):
                out.append(int(str(token)[len("token_id:"):]))
    return out


class HttpSession(Session):
    backend = "http"

    def __init__(self, config: EngineConfig | None, dp_size: int, timeouts: Timeouts,
                 log_dir: Path, url: str | None = None) -> None:
        model = config.model if config else ""
        super().__init__(SessionInfo("http", dp_size, model), timeouts)
        self.config = config
        self.url = url.rstrip("/") if url else None
        self.external = url is not None
        self.launches = not self.external
        self.log_path = Path(log_dir) / f"server-dp{dp_size}-{os.getpid()}.log"
        self.proc: subprocess.Popen | None = None
        self.client: aiohttp.ClientSession | None = None
        self.model_id = model
        self.api = vllm_compat.MODE_API
        self._open_streams = 0
        self._paused = False  # between a pause call and the return of the resume call

    # -- lifecycle -------------------------------------------------------------------

    async def _start(self) -> None:
        self.client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        if self.external:
            await self._attach()
            return
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
               "--port", str(port), *self.config.cli(self.info.dp_size)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            # Its own process group, so the server and every engine it spawns stop together.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.info.extra = {"url": self.url, "log": str(self.log_path)}
        deadline = time.monotonic() + self.timeouts.startup
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with code {self.proc.returncode} "
                                   f"during start-up; last lines of {self.log_path}:\n{log_tail(self.log_path)}")
            if await self._healthy():
                await self._read_model()
                return
            await asyncio.sleep(0.5)
        raise StartupFailed(f"the vLLM server did not answer /health within {self.timeouts.startup:.0f} s; "
                            f"last lines of {self.log_path}:\n{log_tail(self.log_path)}")

    async def _healthy(self) -> bool:
        try:
            async with self.client.get(f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def _read_model(self) -> None:
        async with self.client.get(f"{self.url}/v1/models", timeout=aiohttp.ClientTimeout(total=10)) as r:
            r.raise_for_status()
            self.model_id = (await r.json())["data"][0]["id"]

    async def _attach(self) -> None:
        """Measure a server someone else runs: check it answers and has the pause API."""
        try:
            async with self.client.get(f"{self.url}/is_paused", timeout=aiohttp.ClientTimeout(total=5)) as r:
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ScenarioError(f"no vLLM server answers at {self.url}: {exc or type(exc).__name__}") from exc
        if status == 404:
            raise ScenarioError(f"{self.url} has no pause endpoints (/is_paused is 404): start the server "
                                "with VLLM_SERVER_DEV_MODE=1")
        await self._read_model()
        self.info.model = self.model_id
        version = ""
        try:
            async with self.client.get(f"{self.url}/version", timeout=aiohttp.ClientTimeout(total=5)) as r:
                version = (await r.json()).get("version", "")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            pass
        self.info.extra = {"url": self.url, "server_vllm_version": version, "server": await self._server_config()}

    async def _server_config(self) -> dict:
        """How a server started elsewhere runs, as it reports it (the dev-mode ``/server_info``
        route): its model, execution, weights, memory share and data parallelism; {} where it
        does not answer (meta.json then says unknown)."""
        try:
            async with self.client.get(f"{self.url}/server_info", params={"config_format": "json"},
                                       timeout=aiohttp.ClientTimeout(total=10)) as r:
                config = (await r.json()).get("vllm_config", {}) if r.status == 200 else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return {}
        if not isinstance(config, dict):
            return {}
        return vllm_compat.server_summary(config)

    async def _close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.proc is not None:
            await asyncio.to_thread(procs.stop_group, self.proc)
            self.proc = None

    def alive(self) -> bool:
        if self.external:
            return self.client is not None
        return self.proc is not None and self.proc.poll() is None

    # -- measurement -----------------------------------------------------------------

    async def stream(self, request: int, prompt: str, max_tokens: int, trace: Trace,
                     on_count: OnCount, rank: int | None = None, ids: bool = False) -> None:
        body = {
            "model": self.model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        if ids:  # the ids come as the logprobs' tokens, "token_id:N"
            body.update(logprobs=0, return_tokens_as_token_ids=True)
        finish, seen, prompt_seen = "none", 0, False
        headers = {"X-data-parallel-rank": str(rank)} if rank is not None else None
        trace.event(SUBMIT, request)
        sent_paused = self._paused
        async with self.client.post(f"{self.url}/v1/completions", json=body, headers=headers) as resp:
            if resp.status == 503 and sent_paused:  # sent during an abort or wait pause, refused (0.33 on)
                trace.event(FINISH, request, detail=REJECTED)
                return
            if resp.status != 200:
                raise RuntimeError(f"/v1/completions answered {resp.status}: {(await resp.text())[:200]}")
            self._open_streams += 1
            try:
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = json.loads(data)
                    usage = chunk.get("usage") or {}
                    if not prompt_seen and "prompt_tokens" in usage:
                        trace.event(PROMPT, request, detail=str(usage["prompt_tokens"]))
                        prompt_seen = True
                    total = usage.get("completion_tokens", seen)
                    if total > seen:
                        on_count(request, trace.token(request, total - seen, None, _token_ids(chunk) if ids else None))
                        seen = total
                    for choice in chunk.get("choices") or []:
                        if choice.get("finish_reason"):
                            finish = str(choice["finish_reason"])
            finally:
                self._open_streams -= 1
        trace.event(FINISH, request, detail=finish)

    def admitted(self) -> int:
        """Requests whose response headers came back. The server sends them before its
        generator hands the request to the engine, so a request counted here may reach the
        engine a little later; nothing earlier is observable over HTTP: the first chunk comes
        with the first token, and the server's own request gauges (/metrics) are updated with
        the output of the step that schedules the request, i.e. with that token too. A request
        that reaches the engine only after the pause is held and served after the resume:
        metrics count it in ``held_requests`` (and the abort contract allows it)."""
        return self._open_streams

    async def _post(self, path: str, params: dict | None = None) -> str:
        """POST with query ``params``; a list value repeats its parameter (``tags=a&tags=b``)."""
        query = f"?{urlencode({k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}, doseq=True)}" \
            if params else ""
        async with self.client.post(f"{self.url}{path}{query}") as r:
            text = await r.text()
            if r.status != 200:
                raise RuntimeError(f"POST {path}{query} answered {r.status}: {text[:200]}")
            return f"{r.status} {text.strip()[:200]}"

    async def pause(self, mode: str, clear_cache: bool) -> str:
        await vllm_compat.before_pause()
        self._paused = True
        return await self._post("/pause", vllm_compat.pause_kwargs(self.api, mode, clear_cache))

    async def resume(self) -> str:
        await vllm_compat.before_resume()
        answer = await self._post("/resume")
        self._paused = False
        return answer

    async def sleep(self, level: int, mode: str) -> str:
        await vllm_compat.before_pause()
        self._paused = True
        return await self._post("/sleep", {"level": level, "mode": mode})

    async def wake_up(self, tags: list[str] | None) -> str:
        last = self.wakes_all(tags)
        if last:
            await vllm_compat.before_resume()
        answer = await self._post("/wake_up", {"tags": tags} if tags else None)  # no tags: everything
        if last:
            self._paused = False
        return answer

    async def memory(self) -> list[dict]:
        answer = await self._post_json("/collective_rpc", {"method": "bench_pause_memory",
                                                           "timeout": self.timeouts.pause})
        return list(answer.get("results", []))

    async def is_paused(self) -> bool:
        async with self.client.get(f"{self.url}/is_paused") as r:
            return bool((await r.json())["is_paused"])

    async def _post_json(self, path: str, body: dict) -> dict:
        async with self.client.post(f"{self.url}{path}", json=body) as r:
            text = await r.text()
            if r.status != 200:
                raise RuntimeError(f"POST {path} answered {r.status}: {text[:200]}")
            return json.loads(text) if text.strip() else {}

    async def weight_update(self, step: str, info: dict | None = None) -> str:
        routes = {"init": ("/init_weight_transfer_engine", {"init_info": info or {}}),
                  "start": ("/start_weight_update", {}),
                  "update": ("/update_weights", {"update_info": info or {}}),
                  "finish": ("/finish_weight_update", {})}
        if step not in routes:
            raise ValueError(f"no weight-transfer step {step!r}")
        path, body = routes[step]
        return str((await self._post_json(path, body)).get("message", ""))

    async def idle_probe(self) -> list[dict]:
        answer = await self._post_json("/collective_rpc", {"method": "bench_pause_idle", "timeout": self.timeouts.pause})
        return list(answer.get("results", []))

    async def counters(self) -> dict[str, dict]:
        try:
            async with self.client.get(f"{self.url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                return vllm_compat.counters(await r.text() if r.status == 200 else "")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return vllm_compat.counters("")
