"""Replay teacher: a cheap local HTTP server that answers like vLLM from responses recorded off the real one.

It serves /v1/completions and /v1/chat/completions (plus /health, /v1/models, /version, /tokenize, and the
400 a too-large `logprobs` gets) from a recording, so the service can be driven far faster than the tiny
CPU model generates. Responses are assembled from pre-serialized choice bytes: the recorded choices are
repeated or sliced to match the request's prompt-list length and `n`, cut to its `max_tokens` and `logprobs`
(each distinct cut is serialized once and cached), and renumbered. The server is a bare asyncio protocol
(HTTP/1.1, keep-alive, Content-Length bodies only), so it costs little CPU beside the service it feeds.

    .venv/bin/python -m bench.replay_teacher record                       # starts vLLM, writes the recording
    .venv/bin/python -m bench.replay_teacher record --teacher-url URL     # against a running server
    .venv/bin/python -m bench.replay_teacher serve --port 8200            # serve the recording
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import IO, Any, Self, cast

import httpx
import orjson

from distillery_tools.service_process import stop_process
from distillery_tools.tiny_teacher.serve import free_port

DEFAULT_RECORDING = Path(__file__).parent / "recordings" / "tiny_k20.json.gz"
PREFIX = "token_id:"
CHAT_TURNS = [
    "Write a function that adds two numbers.",
    "Parse a config file and return a dict.",
    "Merge two sorted lists.",
    "Read a CSV file and print each row.",
]
STATUS_TEXT = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    501: "Not Implemented",
}


# ---------------------------------------------------------------------------------------------- recording


def record(base_url: str, out: Path, *, prompts: int, max_tokens: int, k: int, chats: int) -> dict[str, Any]:
    """Ask a real vLLM server for one k-logprob completions batch and a few chats; write them gzipped."""
    from bench.common import prompt_set

    model = "tiny"
    with httpx.Client(base_url=base_url, timeout=600) as client:

        def get(path: str) -> Any:
            response = client.get(path)
            response.raise_for_status()
            return response.json()

        def post(path: str, body: dict[str, Any]) -> httpx.Response:
            return client.post(path, json=body)

        too_many = post("/v1/completions", {"model": model, "prompt": "x", "max_tokens": 1, "logprobs": 1_000_000})
        error_max = too_many.json()
        completions = post(
            "/v1/completions",
            {
                "model": model,
                "prompt": prompt_set(prompts),
                "max_tokens": max_tokens,
                "temperature": 1.0,
                "logprobs": k,
                "return_tokens_as_token_ids": True,
                "return_token_ids": True,
            },
        )
        completions.raise_for_status()
        choices = sorted(completions.json()["choices"], key=lambda c: c["index"])
        chat_choices: list[dict[str, Any]] = []
        chat_prompt_ids: list[list[int] | None] = []
        max_logprobs = _max_allowed(error_max) or k
        for i in range(chats):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": CHAT_TURNS[i % len(CHAT_TURNS)]}],
                "max_tokens": max_tokens,
                "temperature": 1.0,
                "logprobs": True,
                "top_logprobs": min(k + 1, max_logprobs),
                "return_tokens_as_token_ids": True,
                "return_token_ids": True,
            }
            response = post("/v1/chat/completions", body)
            response.raise_for_status()
            data = response.json()
            chat_choices.append(data["choices"][0])
            chat_prompt_ids.append(data.get("prompt_token_ids"))
        recording = {
            "format": 1,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": model,
            "k": k,
            "chat_top_logprobs": min(k + 1, max_logprobs),
            "max_tokens": max_tokens,
            "models": get("/v1/models"),
            "version": get("/version"),
            "tokenize": post("/tokenize", {"model": model, "prompt": "def main():\n"}).json(),
            "error_max_logprobs": {"status": too_many.status_code, "body": error_max},
            "completions": [{key: v for key, v in c.items() if key != "index"} for c in choices],
            "chat": [{key: v for key, v in c.items() if key != "index"} for c in chat_choices],
            "chat_prompt_token_ids": chat_prompt_ids,
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(orjson.dumps(recording), compresslevel=9, mtime=0))
    return recording


def _max_allowed(error: Any) -> int | None:
    message = str((error.get("error") or {}).get("message", "")) if isinstance(error, dict) else ""
    marker = "max allowed:"
    if marker not in message:
        return None
    digits = message.split(marker, 1)[1].strip().split()[0].rstrip(",(")
    return int(digits) if digits.lstrip("-").isdigit() else None


def load_recording(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(gzip.decompress(path.read_bytes()))
    return data


def recorded_tokens(recording: dict[str, Any]) -> int:
    """Generated tokens in the recorded completions (the replay's natural completion lengths)."""
    return sum(len(c["token_ids"]) for c in recording["completions"])


# ------------------------------------------------------------------------------------------ response cuts


def _joined(completions: list[dict[str, Any]], first: int, max_tokens: int) -> dict[str, Any]:
    """Recorded completions first, first + 1, ... (cyclically) joined into one of at least max_tokens
    positions, for benches that need longer completions than the recording holds (text and positions are
    real, the joins are not)."""
    parts: list[dict[str, Any]] = []
    length = 0
    while length < max_tokens:
        part = completions[(first + len(parts)) % len(completions)]
        parts.append(part)
        length += len(part["token_ids"])
    joined = {**parts[-1], "token_ids": [], "text": ""}
    lp: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for part in parts:
        plp = part["logprobs"]
        lp["text_offset"].extend(offset + len(joined["text"]) for offset in plp["text_offset"])
        for key in ("tokens", "token_logprobs", "top_logprobs"):
            lp[key].extend(plp[key])
        joined["token_ids"] += part["token_ids"]
        joined["text"] += part["text"]
    joined["logprobs"] = {**parts[-1]["logprobs"], **lp}
    return joined


def _cut_completion(choice: dict[str, Any], max_tokens: int, k: int | None, recorded_k: int) -> dict[str, Any]:
    """A recorded completions choice cut to max_tokens positions and k candidates (sampled kept first)."""
    c = dict(choice)
    ids: list[int] = c["token_ids"]
    truncated = len(ids) > max_tokens
    if truncated:
        c["token_ids"] = ids[:max_tokens]
        c["text"] = c["text"][: max(1, len(c["text"]) * max_tokens // len(ids))]
        c["finish_reason"] = "length"
        c["stop_reason"] = None
    lp = c.get("logprobs")
    if k is None or lp is None:
        c["logprobs"] = None
        return c
    lp = {key: (v[:max_tokens] if isinstance(v, list) else v) for key, v in lp.items()}
    if k < recorded_k:
        tops = []
        for sampled, top in zip(lp["tokens"], lp["top_logprobs"], strict=True):
            best = sorted(top.items(), key=lambda kv: -kv[1])[:k]
            cut = {sampled: top[sampled]}
            cut.update((key, v) for key, v in best if key != sampled)
            tops.append(cut)
        lp["top_logprobs"] = tops
    c["logprobs"] = lp
    return c


def _cut_chat(choice: dict[str, Any], max_tokens: int, top: int | None) -> dict[str, Any]:
    """A recorded chat choice cut to max_tokens positions and `top` candidates each."""
    c = dict(choice)
    content = (c.get("logprobs") or {}).get("content") or []
    truncated = len(content) > max_tokens
    if "token_ids" in c and c["token_ids"] is not None:
        c["token_ids"] = c["token_ids"][:max_tokens]
    if truncated:
        message = dict(c.get("message") or {})
        text = message.get("content") or ""
        message["content"] = text[: max(1, len(text) * max_tokens // len(content))]
        c["message"] = message
        c["finish_reason"] = "length"
    if top is None:
        c["logprobs"] = None
    else:
        c["logprobs"] = {
            "content": [{**entry, "top_logprobs": entry["top_logprobs"][:top]} for entry in content[:max_tokens]]
        }
    return c


def _body_bytes(choice: dict[str, Any]) -> bytes:
    """The choice serialized without its index and without the opening brace: b'"text":...}'."""
    return orjson.dumps(choice)[1:]


class Responder:
    """Builds response bytes for requests; every distinct (endpoint, max_tokens, k) cut is serialized once."""

    def __init__(self, recording: dict[str, Any]) -> None:
        self.rec = recording
        self.model: str = recording["model"]
        self.k: int = recording["k"]
        self.max_logprobs = _max_allowed(recording["error_max_logprobs"]["body"]) or self.k
        self._cuts: dict[tuple[str, int, int | None], list[tuple[bytes, int]]] = {}
        self._chat_turn = 0
        self.requests = 0
        self.tokens = 0

    def _completion_cuts(self, max_tokens: int, k: int | None) -> list[tuple[bytes, int]]:
        key = ("cmpl", max_tokens, k)
        if key not in self._cuts:
            recorded = self.rec["completions"]
            if max_tokens > self.rec["max_tokens"]:  # longer than recorded: each joined with the next ones
                recorded = [_joined(recorded, i, max_tokens) for i in range(len(recorded))]
            cut = [_cut_completion(c, max_tokens, k, self.k) for c in recorded]
            self._cuts[key] = [(_body_bytes(c), len(c["token_ids"])) for c in cut]
        return self._cuts[key]

    def _chat_cuts(self, max_tokens: int, top: int | None) -> list[tuple[bytes, int]]:
        key = ("chat", max_tokens, top)
        if key not in self._cuts:
            cut = [_cut_chat(c, max_tokens, top) for c in self.rec["chat"]]
            self._cuts[key] = [(_body_bytes(c), len(c["logprobs"]["content"] if c["logprobs"] else [])) for c in cut]
        return self._cuts[key]

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        path = path.split("?", 1)[0]
        if method == "GET":
            if path == "/health":
                return 200, b""
            if path == "/v1/models":
                return 200, orjson.dumps(self.rec["models"])
            if path == "/version":
                return 200, orjson.dumps(self.rec["version"])
            return 404, _error(404, f"no route GET {path}", "NotFoundError")
        if method != "POST":
            return 405, _error(405, "method not allowed", "BadRequestError")
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, _error(400, "body is not JSON", "BadRequestError")
        if path == "/tokenize":
            return 200, orjson.dumps(self.rec["tokenize"])
        if path == "/detokenize":
            # The service's tokenizer fingerprint probe: any stable text will do for a replay.
            return 200, orjson.dumps({"prompt": " ".join(map(str, request.get("tokens", [])))})
        if path not in ("/v1/completions", "/v1/chat/completions"):
            return 404, _error(404, f"no route POST {path}", "NotFoundError")
        if request.get("model") != self.model:
            return 404, _error(404, f"The model `{request.get('model')}` does not exist.", "NotFoundError")
        self.requests += 1
        if path == "/v1/completions":
            return self._completions(request)
        return self._chat(request)

    def _too_many(self, asked: int, param: str) -> tuple[int, bytes]:
        message = (
            f"Requested sample logprobs of {asked}, which is greater than max allowed: {self.max_logprobs} "
            f"(parameter={param}, value={asked})"
        )
        return 400, _error(400, message, "BadRequestError", param)

    def _completions(self, request: dict[str, Any]) -> tuple[int, bytes]:
        prompt = request.get("prompt")
        batched = isinstance(prompt, list) and prompt and not isinstance(prompt[0], int)
        num_prompts = len(prompt) if batched else 1
        n = int(request.get("n") or 1)
        k = request.get("logprobs")
        if k is not None and k > self.max_logprobs:
            return self._too_many(k, "logprobs")
        if k is not None and k > self.k:
            return 400, _error(400, f"the replay holds k={self.k}; asked for {k}", "BadRequestError")
        max_tokens = int(request.get("max_tokens") or 16)
        cuts = self._completion_cuts(max_tokens, k)
        parts: list[bytes] = []
        generated = 0
        total = num_prompts * n
        for i in range(total):
            rest, tokens = cuts[i % len(cuts)]
            parts.append(b'{"index":%d,%b' % (i, rest))
            generated += tokens
        self.tokens += generated
        usage = {"prompt_tokens": 8 * num_prompts, "total_tokens": 8 * num_prompts + generated}
        usage["completion_tokens"] = generated
        head = b'{"id":"cmpl-replay","object":"text_completion","created":%d,"model":%b,"choices":[' % (
            int(time.time()),
            orjson.dumps(self.model),
        )
        return 200, head + b",".join(parts) + b'],"usage":' + orjson.dumps(usage) + b"}"

    def _chat(self, request: dict[str, Any]) -> tuple[int, bytes]:
        n = int(request.get("n") or 1)
        top = int(request.get("top_logprobs") or 0) if request.get("logprobs") else None
        if top is not None and top > self.max_logprobs:
            return self._too_many(top, "top_logprobs")
        if top is not None and top > self.rec["chat_top_logprobs"]:
            return 400, _error(400, f"the replay holds {self.rec['chat_top_logprobs']} per position", "BadRequestError")
        max_tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
        cuts = self._chat_cuts(max_tokens, top)
        turn = self._chat_turn % len(cuts)
        self._chat_turn += 1
        parts = []
        generated = 0
        for i in range(n):
            rest, tokens = cuts[(turn + i) % len(cuts)]
            parts.append(b'{"index":%d,%b' % (i, rest))
            generated += tokens
        self.tokens += generated
        prompt_ids = self.rec["chat_prompt_token_ids"][turn]
        usage = {"prompt_tokens": len(prompt_ids or []), "completion_tokens": generated}
        head = b'{"id":"chatcmpl-replay","object":"chat.completion","created":%d,"model":%b,"choices":[' % (
            int(time.time()),
            orjson.dumps(self.model),
        )
        tail = b'],"usage":%b,"prompt_logprobs":null,"prompt_token_ids":%b}' % (
            orjson.dumps(usage),
            orjson.dumps(prompt_ids),
        )
        return 200, head + b",".join(parts) + tail


def _error(status: int, message: str, kind: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": status}})


# ---------------------------------------------------------------------------------------------- the server


Reply = tuple[int, bytes] | tuple[int, bytes, str]


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies (just what httpx sends); subclasses answer requests.

    `handle` returns a reply, or None to answer later with `respond` (requests pipelined behind a deferred one
    wait in the buffer, so replies keep their order)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self._deferred = False
        self._close_after = False

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply | None:
        """The reply to one request: (status, body[, content type]), or None to answer later with `respond`."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but quacks alike

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._serve_buffered()

    def respond(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        """Answer the deferred request, then go on with any requests buffered behind it."""
        if not self._deferred:
            return
        self._deferred = False
        if self.transport is not None:
            self._send(status, payload, self._close_after, content_type)
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while self.transport is not None and not self._deferred:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", ""):
                self._send(501, _error(501, "chunked request bodies are not supported", "NotImplemented"), True)
                return
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            close = headers.get("connection", "").lower() == "close"
            reply: Reply | None
            try:
                reply = self.handle(method, target, headers, body)
            except Exception as exc:  # a malformed request must not take the server down
                reply = 400, _error(400, f"could not answer: {exc!r}", "BadRequestError")
            if reply is None:
                self._deferred, self._close_after = True, close
                return
            self._send(reply[0], reply[1], close, *reply[2:])

    def _send(self, status: int, payload: bytes, close: bool, content_type: str = "application/json") -> None:
        assert self.transport is not None
        head = (
            f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Error')}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(payload)}\r\nconnection: {'close' if close else 'keep-alive'}\r\n\r\n"
        ).encode()
        self.transport.writelines([head, payload])
        if close:
            self.transport.close()
            self.transport = None


class _HttpProtocol(HttpProtocol):
    """The replay server's protocol: every request answered at once by the Responder."""

    def __init__(self, responder: Responder) -> None:
        super().__init__()
        self.responder = responder

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply | None:
        return self.responder.handle(method, target, body)


async def serve(recording: Path, host: str, port: int) -> None:
    """Serve the recording until killed."""
    responder = Responder(load_recording(recording))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _HttpProtocol(responder), host, port, backlog=512)
    async with server:
        await server.serve_forever()


class ReplayTeacher:
    """The replay server as a subprocess on a free port; a context manager yielding itself (base_url, pid)."""

    def __init__(self, recording: Path = DEFAULT_RECORDING, *, log_path: Path | None = None) -> None:
        self.recording = recording
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> None:
        command = [sys.executable, "-m", "bench.replay_teacher", "serve", "--port", str(self.port)]
        command += ["--recording", str(self.recording)]
        self._log = self.log_path.open("ab") if self.log_path else None
        out = self._log or subprocess.DEVNULL
        root = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(command, cwd=root, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"replay teacher exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("replay teacher did not come up")

    def stop(self) -> None:
        stop_process(self.process, grace=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def replay_teacher(recording: Path = DEFAULT_RECORDING) -> Iterator[ReplayTeacher]:
    """A running replay server for the given recording."""
    with ReplayTeacher(recording) as server:
        yield server


def run_until_interrupted(server: Coroutine[Any, Any, None]) -> None:
    """Run a server coroutine on uvloop when installed (else asyncio) until Ctrl-C or SIGTERM's exit."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record responses from a real vLLM server")
    rec.add_argument("--teacher-url", help="a running vLLM server serving the tiny teacher as 'tiny'")
    rec.add_argument("--out", type=Path, default=DEFAULT_RECORDING)
    rec.add_argument("--prompts", type=int, default=16)
    rec.add_argument("--max-tokens", type=int, default=128)
    rec.add_argument("-k", type=int, default=20)
    rec.add_argument("--chats", type=int, default=4)
    srv = sub.add_parser("serve", help="serve a recording")
    srv.add_argument("--recording", type=Path, default=DEFAULT_RECORDING)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    if args.command == "serve":
        run_until_interrupted(serve(args.recording, args.host, args.port))
        return
    kwargs = {"prompts": args.prompts, "max_tokens": args.max_tokens, "k": args.k, "chats": args.chats}
    if args.teacher_url:
        rec_data = record(args.teacher_url, args.out, **kwargs)
    else:
        from bench.common import tiny_teacher

        with tempfile.TemporaryDirectory() as tmp, tiny_teacher(Path(tmp)) as url:
            rec_data = record(url, args.out, **kwargs)
    size = os.path.getsize(args.out)
    print(
        f"replay_teacher: recorded {len(rec_data['completions'])} completions ({recorded_tokens(rec_data)} tokens, "
        f"k={rec_data['k']}) and {len(rec_data['chat'])} chats to {args.out} ({size / 1e6:.2f} MB)"
    )


if __name__ == "__main__":
    main()
