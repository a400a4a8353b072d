"""One simulated vLLM GPU replica (the engine and HTTP side of bench.fleet_sim): continuous batching on a
simulated clock, vLLM-shaped replies from the recording, Prometheus /metrics, an optional API key.

A completions request of P prompts and n samples is P*n sequences; each sequence's length is drawn (seeded)
from a long-tailed distribution, capped by max_tokens (or is exactly max_tokens with --fixed-length). At
most --max-num-seqs sequences run at once, the rest wait in a FIFO queue; every running sequence advances
at min(--seq-rate, --capacity / running) tokens/s. Finish times are exact (event by event); replies go out
on a timer at most --tick-ms late, when all of a request's sequences have finished. Chat requests are
replay-style: n sequences of one drawn length (at most the recorded 128).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson

from bench.replay_teacher import DEFAULT_RECORDING, HttpProtocol, Reply, Responder, _error, load_recording
from bench.sim_choices import ChoiceBuilder

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROMPT_TOKENS = 8  # a text prompt's assumed length (the simulator has no tokenizer)


@dataclass
class ReplicaOptions:
    """How one simulated replica behaves; each field is the `serve` flag of the same name."""

    capacity: float = 4000.0
    seq_rate: float = 40.0
    max_num_seqs: int = 256
    mean_tokens: float = 128.0
    length_dist: str = "lognormal"
    spread: float | None = None
    fixed_length: bool = False
    seed: int = 0
    api_key: str | None = None
    served_model_name: str = "tiny"
    max_model_len: int = 2048
    tick_ms: float = 5.0
    recording: Path = DEFAULT_RECORDING

    def argv(self) -> list[str]:
        """The `serve` flags that reproduce these options."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                out += [flag] if value else []
            elif value is not None:
                out += [flag, str(value)]
        return out


def add_replica_flags(parser: argparse.ArgumentParser) -> None:
    """The ReplicaOptions flags, on a parser."""
    d = ReplicaOptions()
    add = parser.add_argument
    add("--capacity", type=float, default=d.capacity, help="generated tokens/s of the whole replica")
    add("--seq-rate", type=float, default=d.seq_rate, help="tokens/s of one sequence at most")
    add("--max-num-seqs", type=int, default=d.max_num_seqs, help="sequences running at once; the rest queue")
    add("--mean-tokens", type=float, default=d.mean_tokens, help="mean drawn length (before the max_tokens cap)")
    add("--length-dist", choices=["lognormal", "pareto"], default=d.length_dist)
    add("--spread", type=float, help="lognormal sigma (default 1.0) or Pareto shape alpha > 1 (default 1.5)")
    add("--fixed-length", action="store_true", help="every sequence runs exactly max_tokens")
    add("--seed", type=int, default=d.seed)
    add("--api-key", help="require 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize")
    add("--served-model-name", default=d.served_model_name)
    add("--max-model-len", type=int, default=d.max_model_len)
    add("--tick-ms", type=float, default=d.tick_ms, help="replies go out at most this late")
    add("--recording", type=Path, default=d.recording)


def options_from(args: argparse.Namespace) -> ReplicaOptions:
    """ReplicaOptions from parsed add_replica_flags flags."""
    return ReplicaOptions(**{f.name: getattr(args, f.name) for f in fields(ReplicaOptions)})


class LengthSampler:
    """Each sequence's generated length: seeded draws from a long-tailed distribution, capped by max_tokens."""

    def __init__(self, options: ReplicaOptions) -> None:
        self.fixed = options.fixed_length
        self.dist = options.length_dist
        self.rng = random.Random(options.seed)
        mean = options.mean_tokens
        if self.dist == "pareto":
            self.spread = options.spread or 1.5
            if self.spread <= 1:
                raise ValueError("a Pareto shape alpha <= 1 has no mean")
            self.scale = mean * (self.spread - 1) / self.spread
        else:
            self.spread = options.spread or 1.0
            self.scale = math.log(mean) - self.spread**2 / 2  # lognormal mu for this mean

    def draw(self, max_tokens: int) -> int:
        """One length in [1, max_tokens]."""
        if self.fixed:
            return max_tokens
        if self.dist == "pareto":
            x = self.scale * self.rng.paretovariate(self.spread)
        else:
            x = self.rng.lognormvariate(self.scale, self.spread)
        return max(1, min(max_tokens, round(x)))


WAITING, RUNNING, FINISHED, ABORTED = range(4)


class Seq:
    """One sequence: its request, drawn length and state."""

    __slots__ = ("length", "request", "state")

    def __init__(self, request: SimRequest, length: int) -> None:
        self.request = request
        self.length = length
        self.state = WAITING


class SimRequest:
    """One HTTP request in the engine: its sequences, how many are unfinished, and how to answer it."""

    def __init__(self, protocol: SimProtocol, lengths: list[int], reply: Callable[[SimRequest], bytes]) -> None:
        self.protocol = protocol
        self.seqs = [Seq(self, n) for n in lengths]
        self.left = len(self.seqs)
        self.reply = reply


class Engine:
    """Continuous batching on a simulated clock, event by event.

    `v` is the tokens one sequence running since the start would have generated: all running sequences
    advance alike, so a sequence admitted at v0 finishes when v reaches v0 + its length, and only the
    heap's smallest finish point needs watching. The rate dv/dt changes only when `running` changes."""

    def __init__(self, options: ReplicaOptions, on_finished: Callable[[SimRequest], None]) -> None:
        self.capacity = options.capacity
        self.seq_rate = options.seq_rate
        self.max_num_seqs = options.max_num_seqs
        self.tick = options.tick_ms / 1000
        self.on_finished = on_finished
        self.loop = asyncio.get_running_loop()
        self.t = self.loop.time()
        self.v = 0.0
        self.heap: list[tuple[float, int, Seq]] = []
        self.queue: deque[Seq] = deque()
        self.running = 0
        self.waiting = 0
        self.generated = 0.0
        self.finished_seqs = 0
        self._admitted = 0
        self._timer: asyncio.TimerHandle | None = None

    def rate(self) -> float:
        """Tokens/s each running sequence advances at now."""
        return min(self.seq_rate, self.capacity / self.running) if self.running else 0.0

    def submit(self, request: SimRequest) -> None:
        """Queue a request's sequences (FIFO behind any waiting ones)."""
        self.poke()
        self.queue.extend(request.seqs)
        self.waiting += len(request.seqs)
        self._admit()
        self._schedule()

    def abort(self, request: SimRequest) -> None:
        """Drop a request's unfinished sequences (its client went away), freeing their slots."""
        self.poke()
        for seq in request.seqs:
            if seq.state == WAITING:
                self.waiting -= 1
            elif seq.state == RUNNING:
                self.running -= 1
            seq.state = ABORTED if seq.state != FINISHED else FINISHED
        self._admit()
        self._schedule()

    def poke(self) -> None:
        """Bring the simulation up to now: finish due sequences, admit queued ones, answer finished requests."""
        now = self.loop.time()
        finished: list[SimRequest] = []
        while self.heap:
            if self.running == 0:  # only aborted sequences left in the heap
                self.heap.clear()
                break
            finish_v = self.heap[0][0]
            at = self.t + (finish_v - self.v) / self.rate()
            if at > now:
                break
            self.generated += (finish_v - self.v) * self.running
            self.v, self.t = finish_v, at
            while self.heap and self.heap[0][0] <= finish_v:
                seq = heapq.heappop(self.heap)[2]
                if seq.state != RUNNING:
                    continue
                seq.state = FINISHED
                self.running -= 1
                self.finished_seqs += 1
                seq.request.left -= 1
                if seq.request.left == 0:
                    finished.append(seq.request)
            self._admit()
        if self.running:
            dv = self.rate() * (now - self.t)
            self.generated += dv * self.running
            self.v += dv
        self.t = now
        for request in finished:
            self.on_finished(request)

    def _admit(self) -> None:
        while self.running < self.max_num_seqs and self.queue:
            seq = self.queue.popleft()
            if seq.state != WAITING:
                continue
            seq.state = RUNNING
            self.waiting -= 1
            self.running += 1
            self._admitted += 1
            heapq.heappush(self.heap, (self.v + seq.length, self._admitted, seq))

    def _schedule(self) -> None:
        if not (self.running and self.heap):
            return
        due = self.t + (self.heap[0][0] - self.v) / self.rate()
        if self._timer is not None and not self._timer.cancelled() and self._timer.when() <= due:
            return  # an earlier wake-up is already set; it reschedules
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(max(due, self.t + self.tick), self._wake)

    def _wake(self) -> None:
        self._timer = None
        self.poke()
        self._schedule()


class Replica:
    """One simulated vLLM server: validates requests, runs them through the Engine, assembles the replies."""

    def __init__(self, options: ReplicaOptions) -> None:
        recording = load_recording(options.recording)
        recording["model"] = name = options.served_model_name
        models = copy.deepcopy(recording["models"])
        for model in models["data"]:
            model.update(id=name, max_model_len=options.max_model_len)
        recording["models"] = models
        self.options = options
        self.responder = Responder(recording)
        self.choices = ChoiceBuilder(recording)
        self.chat_len = min(len(c["logprobs"]["content"]) for c in recording["chat"])
        self.sampler = LengthSampler(options)
        self.engine = Engine(options, self._finished)
        self.labels = f'{{engine="0",model_name="{name}"}}'
        self.prompt_tokens = 0
        self._bearer = f"Bearer {options.api_key}" if options.api_key else None

    def handle(
        self, protocol: SimProtocol, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Reply | None:
        """A reply now, or None when the request went into the engine (answered when it finishes)."""
        path = target.split("?", 1)[0]
        if method == "GET" and path == "/metrics":
            return 200, self.metrics(), METRICS_TYPE
        guarded = path.startswith("/v1/") or path in ("/tokenize", "/detokenize")
        if guarded and self._bearer is not None and headers.get("authorization") != self._bearer:
            return 401, _error(401, "Unauthorized: missing or wrong API key", "AuthenticationError")
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return self.responder.handle(method, target, body)
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, _error(400, "body is not JSON", "BadRequestError")
        if request.get("model") != self.responder.model:
            return 404, _error(404, f"The model `{request.get('model')}` does not exist.", "NotFoundError")
        refused = self._completions(protocol, request) if path == "/v1/completions" else self._chat(protocol, request)
        if refused is not None:
            return refused
        assert protocol.request is not None
        self.engine.submit(protocol.request)
        return None

    def _too_long(self, prompt_tokens: int, max_tokens: int) -> Reply | None:
        if prompt_tokens + max_tokens <= self.options.max_model_len:
            return None
        message = (
            f"This model's maximum context length is {self.options.max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion."
        )
        return 400, _error(400, message, "BadRequestError")

    def _completions(self, protocol: SimProtocol, request: dict[str, Any]) -> Reply | None:
        prompt = request.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            prompts: list[Any] = prompt
        else:
            prompts = [prompt]
        lengths = [len(p) if isinstance(p, list) else PROMPT_TOKENS for p in prompts]
        n = int(request.get("n") or 1)
        k = request.get("logprobs")
        max_tokens = int(request.get("max_tokens") or 16)
        if k is not None and k > self.responder.max_logprobs:
            return self.responder._too_many(k, "logprobs")
        if k is not None and k > self.choices.recorded_k:
            return 400, _error(
                400, f"the simulator holds k={self.choices.recorded_k}; asked for {k}", "BadRequestError"
            )
        too_long = self._too_long(max(lengths), max_tokens)
        if too_long is not None:
            return too_long
        self.prompt_tokens += sum(lengths) * n

        def reply(req: SimRequest) -> bytes:
            parts = []
            for i, seq in enumerate(req.seqs):
                finish = "length" if seq.length == max_tokens else "stop"
                parts.append(self.choices.choice(i, seq.length, k, finish))
            generated = sum(seq.length for seq in req.seqs)
            usage = {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths) + generated}
            usage["completion_tokens"] = generated
            head = b'{"id":"cmpl-sim-%d","object":"text_completion","created":%d,"model":%b,"choices":[' % (
                id(req),
                int(time.time()),
                orjson.dumps(self.responder.model),
            )
            return head + b",".join(parts) + b'],"usage":' + orjson.dumps(usage) + b"}"

        draws = [self.sampler.draw(max_tokens) for _ in range(len(prompts) * n)]
        protocol.request = SimRequest(protocol, draws, reply)
        return None

    def _chat(self, protocol: SimProtocol, request: dict[str, Any]) -> Reply | None:
        max_tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
        too_long = self._too_long(PROMPT_TOKENS, max_tokens)
        if too_long is not None:
            return too_long
        length = self.sampler.draw(min(max_tokens, self.chat_len))
        status, body = self.responder._chat({**request, "max_tokens": length})
        if status != 200:
            return status, body
        n = int(request.get("n") or 1)
        protocol.request = SimRequest(protocol, [length] * n, lambda _req: body)
        return None

    def _finished(self, request: SimRequest) -> None:
        protocol = request.protocol
        protocol.request = None
        protocol.respond(200, request.reply(request))

    def metrics(self) -> bytes:
        """Prometheus text: vLLM's gauges and counters for this replica."""
        self.engine.poke()
        e = self.engine
        rows = [
            ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", e.running),
            ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", e.waiting),
            ("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", round(e.generated)),
            ("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", self.prompt_tokens),
            ("vllm:request_success_total", "counter", "Count of successfully processed requests.", e.finished_seqs),
        ]
        lines = []
        for name, kind, text, value in rows:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name}{self.labels} {float(value)}"]
        return ("\n".join(lines) + "\n").encode()


class SimProtocol(HttpProtocol):
    """The replica's HTTP connection: at most one request in the engine at a time; a disconnect aborts it."""

    def __init__(self, replica: Replica) -> None:
        super().__init__()
        self.replica = replica
        self.request: SimRequest | None = None

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply | None:
        """Hand the request to the replica."""
        return self.replica.handle(self, method, target, headers, body)

    def connection_lost(self, exc: Exception | None) -> None:
        """Abort the request in flight, as vLLM does when its client disconnects."""
        super().connection_lost(exc)
        if self.request is not None:
            self.replica.engine.abort(self.request)
            self.request = None


async def serve(options: ReplicaOptions, host: str, port: int) -> None:
    """One replica on host:port until killed."""
    replica = Replica(options)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SimProtocol(replica), host, port, backlog=1024)
    async with server:
        await server.serve_forever()
