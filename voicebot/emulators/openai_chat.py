"""OpenAI chat completions emulator: ``POST /v1/chat/completions`` (SSE streaming, or one JSON answer)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .common import Runtime, abort_connection, accepts, credential, json_response, new_request_id, sleep_ms
from .config import LlmConfig
from .faults import LlmFaults, wait_stall
from .log import Event

DEFAULT_RESULT_CHARS = 120
"""How much of a tool result the rule-based default reply reads out."""
ARGUMENT_FRAGMENT_CHARS = 5
"""Tool-call arguments are streamed in fragments of this many characters, like the real API's small pieces."""

_TOKEN = re.compile(r"\s*[\w']+|\s*[^\w\s]|\s+")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A scripted tool call; ``arguments`` is a JSON string or a mapping serialised for you."""

    name: str
    arguments: str | Mapping[str, Any] = "{}"
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments as the JSON text the API streams."""
        if isinstance(self.arguments, str):
            return self.arguments
        return orjson.dumps(dict(self.arguments)).decode()


@dataclass(frozen=True, slots=True)
class LlmReply:
    """One scripted answer: text tokens first, then tool calls. ``finish_reason`` defaults to the usual."""

    text: str = ""
    tool_calls: Sequence[ToolCall] = field(default_factory=tuple)
    finish_reason: str | None = None

    @property
    def finish(self) -> str:
        """The finish reason sent with the last choice chunk."""
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    @classmethod
    def parse(cls, item: str | Mapping[str, Any]) -> LlmReply:
        """A reply from a script file item: a string, or ``{"text", "tool_calls": [{"name", "arguments"}]}``."""
        if isinstance(item, str):
            return cls(item)
        calls = tuple(ToolCall(c["name"], c.get("arguments", "{}"), c.get("id")) for c in item.get("tool_calls", ()))
        return cls(item.get("text", ""), calls, item.get("finish_reason"))


def tokenize(text: str) -> list[str]:
    """Split text into word-ish tokens that concatenate back to it: ``"Hi, Bob" -> ["Hi", ",", " Bob"]``."""
    return _TOKEN.findall(text)


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MISSING_TOOL_RESPONSES = (
    "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. "
    "The following tool_call_ids did not have response messages: {ids}"
)
TOOL_WITHOUT_CALL = (
    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'."
)


def invalid_sequence(messages: Sequence[Any]) -> tuple[str, str] | None:
    """Why OpenAI would refuse this message list with a 400, as ``(message, param)``; None when it is valid.

    The rules the real API enforces on tool use (texts as the API words them, its "preceeding" typo included):
    every assistant message with ``tool_calls`` is followed, before any other message, by one ``tool`` message per
    call id; a ``tool`` message must answer a call of the assistant message just before its run of tool messages.
    """
    open_ids: list[str] = []  # ids of the last tool_calls message not answered yet
    answerable: set[str] = set()  # ids the current run of tool messages may answer
    opened_at = 0
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
            return f"Invalid value for 'role' at messages[{index}].", f"messages.[{index}].role"
        role = message["role"]
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                return (
                    "Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'.",
                    f"messages.[{index}].tool_call_id",
                )
            if call_id not in answerable:
                return TOOL_WITHOUT_CALL, f"messages.[{index}].role"
            answerable.discard(call_id)  # a second answer to the same id has nothing left to answer
            if call_id in open_ids:
                open_ids.remove(call_id)
            continue
        if open_ids:
            return MISSING_TOOL_RESPONSES.format(ids=", ".join(open_ids)), f"messages.[{opened_at}].role"
        answerable = set()
        calls = message.get("tool_calls") if role == "assistant" else None
        if calls:
            ids = [c.get("id") for c in calls if isinstance(c, Mapping)]
            if len(ids) != len(calls) or not all(isinstance(i, str) and i for i in ids):
                return f"Missing required parameter: 'messages[{index}].tool_calls[0].id'.", f"messages.[{index}]"
            open_ids, answerable, opened_at = [str(i) for i in ids], {str(i) for i in ids}, index
    if open_ids:
        return MISSING_TOOL_RESPONSES.format(ids=", ".join(open_ids)), f"messages.[{opened_at}].role"
    return None


def default_reply(messages: Sequence[Mapping[str, Any]]) -> LlmReply:
    """A small rule-based answer to the last user message, used when the script is empty."""
    if messages and messages[-1].get("role") == "tool":
        result = str(messages[-1].get("content") or "")[:DEFAULT_RESULT_CHARS]
        return LlmReply(f"Here is what I found: {result}")
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    content = last.get("content") if last is not None else None
    if isinstance(content, list):  # content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    said = (content or "").strip()
    lower = said.lower()
    if not said:
        return LlmReply("Hello! How can I help you today?")
    if "hour" in lower or "open" in lower:
        return LlmReply("We are open Monday to Friday, from nine in the morning to six in the evening.")
    if any(w in lower for w in ("bye", "that's all", "thank you")):
        return LlmReply("You're welcome. Goodbye and have a nice day!")
    return LlmReply(f"I heard you say: {said} How else can I help?")


class LlmService:
    """The OpenAI emulator: knobs (``config``), ``faults`` and the reply ``script`` (str or LlmReply)."""

    def __init__(self, config: LlmConfig, runtime: Runtime, key: str | None) -> None:
        self.config = config
        self.faults = LlmFaults()
        self.script: list[LlmReply | str] = []
        self.key = key
        self._runtime = runtime

    @property
    def requests(self) -> list[Event]:
        """The ``request`` events recorded so far (their data holds model, messages, tools, ...)."""
        return self._runtime.log.select("llm", "request")

    def next_reply(self, messages: Sequence[Mapping[str, Any]]) -> LlmReply:
        """The next scripted reply, or the rule-based default once the script is used up."""
        if self.script:
            item = self.script.pop(0)
            return LlmReply(item) if isinstance(item, str) else item
        return default_reply(messages)

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: the configured model (the bot's keep-warm request)."""
        if not accepts(credential(request, "Bearer"), self.key):
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        self._runtime.log.append("llm", "models")
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "emulator"}
        return json_response(200, {"object": "list", "data": [model]})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        with self._runtime.handler():
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        log, faults = self._runtime.log, self.faults
        request_id = new_request_id()
        if not accepts(credential(request, "Bearer"), self.key):
            log.append("llm", "rejected", status=401, request_id=request_id)
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        await sleep_ms(faults.latency_ms)
        status = faults.take_error()
        if status is not None:
            log.append("llm", "rejected", status=status, request_id=request_id)
            return _error(status, f"Injected error {status}.", None, faults.error_headers())
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            log.append("llm", "rejected", status=400, request_id=request_id)
            return _error(400, "'messages' is a required property", None)
        # The bot's one-token startup warm-up (voicebot.providers.openai_llm) is not a turn: logged apart, and it
        # leaves the script alone.
        warmup = body.get("user") == "voicebot-warmup"
        invalid = invalid_sequence(body["messages"])
        if invalid is not None:
            message, param = invalid
            # Its own event kind: tests assert that no request of the bot was ever an invalid sequence.
            log.append("llm", "invalid_messages", status=400, request_id=request_id, error=message, param=param)
            return _error(400, message, None, param=param)
        log.append(
            "llm",
            "warmup" if warmup else "request",
            request_id=request_id,
            model=body.get("model"),
            messages=body["messages"],
            tools=body.get("tools"),
            stream=bool(body.get("stream")),
            body=body,
        )
        reply = LlmReply("OK") if warmup else self.next_reply(body["messages"])
        model = body.get("model") or self.config.model
        completion = _Completion(request_id, model, reply, _prompt_tokens(body["messages"]))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "x-request-id": request_id})
        try:
            await wait_stall(faults.stall_s)
            await sleep_ms(self.config.ttft_ms)
            if not body.get("stream"):
                log.append("llm", "complete", request_id=request_id, tokens=completion.token_count)
                return json_response(200, completion.message())
            await response.prepare(request)
            await self._stream(request, response, completion, include_usage)
        except ConnectionError:
            # The client went away mid-stream; aiohttp finishes the dead response quietly.
            log.append("llm", "abort", request_id=request_id, tokens_sent=completion.sent)
        except asyncio.CancelledError:
            self._runtime.record_cancel("llm", request_id=request_id, tokens_sent=completion.sent)
            raise
        return response

    async def _stream(
        self, request: web.Request, response: web.StreamResponse, completion: _Completion, include_usage: bool
    ) -> None:
        """Write the SSE events, tokens paced from the first one; ``completion.sent`` counts them."""
        log, config = self._runtime.log, self.config
        loop = asyncio.get_running_loop()
        drop_after = self.faults.drop_after_tokens
        origin = loop.time()
        for is_token, chunk in completion.chunks(include_usage):
            if is_token:
                sent = completion.sent
                if drop_after is not None and sent >= drop_after:
                    log.append("llm", "drop", request_id=completion.request_id, tokens_sent=sent)
                    abort_connection(request)
                    return
                rate = config.tokens_per_second
                if rate and sent > 0:
                    delay = origin + sent / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if is_token:
                if completion.sent == 0:
                    log.append("llm", "first_token", request_id=completion.request_id)
                completion.sent += 1
        await response.write(b"data: [DONE]\n\n")
        # End the chunked body: the SDK reads to EOF after [DONE] (PROVIDERS.md §3.4).
        await response.write_eof()
        log.append("llm", "complete", request_id=completion.request_id, tokens=completion.sent)


class _Completion:
    """The chunks of one streamed (or whole) completion."""

    def __init__(self, request_id: str, model: str, reply: LlmReply, prompt_tokens: int) -> None:
        self.request_id = request_id
        self.id = f"chatcmpl-{request_id.replace('-', '')[:24]}"
        self.model = model
        self.reply = reply
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.text_tokens = tokenize(reply.text)
        self.call_ids = [c.id or f"call_{request_id[:8]}{i}" for i, c in enumerate(reply.tool_calls)]
        self.fragments = [_fragments(c.arguments_json()) for c in reply.tool_calls]
        self.token_count = len(self.text_tokens) + sum(1 + len(f) for f in self.fragments)
        self.sent = 0
        """Tokens written so far (for the abort event)."""

    def usage(self) -> Json:
        total = self.prompt_tokens + self.token_count
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.token_count, "total_tokens": total}

    def _chunk(self, delta: Json, finish: str | None = None, usage: bool = False) -> Json:
        chunk: Json = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_emulator",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage:
            chunk["usage"] = None  # with include_usage every chunk carries "usage": null but the last
        return chunk

    def chunks(self, include_usage: bool) -> Iterator[tuple[bool, Json]]:
        """``(is_token, chunk)`` in order: the role chunk, tokens, tool calls, finish, usage."""
        yield False, self._chunk({"role": "assistant", "content": ""}, usage=include_usage)
        for token in self.text_tokens:
            yield True, self._chunk({"content": token}, usage=include_usage)
        for index, (call, call_id) in enumerate(zip(self.reply.tool_calls, self.call_ids, strict=True)):
            head: Json = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            yield True, self._chunk({"tool_calls": [head]}, usage=include_usage)
            for fragment in self.fragments[index]:
                part = {"index": index, "function": {"arguments": fragment}}
                yield True, self._chunk({"tool_calls": [part]}, usage=include_usage)
        yield False, self._chunk({}, self.reply.finish, usage=include_usage)
        if include_usage:
            yield False, {**self._chunk({}, usage=False), "choices": [], "usage": self.usage()}

    def message(self) -> Json:
        """The non-streaming ``chat.completion`` object."""
        message: Json = {"role": "assistant", "content": self.reply.text or None, "refusal": None}
        if self.reply.tool_calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json()}}
                for c, cid in zip(self.reply.tool_calls, self.call_ids, strict=True)
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_emulator",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.reply.finish}],
            "usage": self.usage(),
        }


def _fragments(arguments: str) -> list[str]:
    return [arguments[i : i + ARGUMENT_FRAGMENT_CHARS] for i in range(0, len(arguments), ARGUMENT_FRAGMENT_CHARS)]


def _prompt_tokens(messages: Sequence[Any]) -> int:
    # Roughly what a tokenizer gives: about one token per word-ish piece.
    return sum(
        len(tokenize(m["content"])) + 4 for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)
    )


def _error(
    status: int,
    message: str,
    code: str | None,
    headers: Mapping[str, str] | None = None,
    *,
    param: str | None = None,
) -> web.Response:
    kind = _ERROR_TYPES.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return json_response(status, body, headers)
