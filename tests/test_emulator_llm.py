"""Contract tests: the real openai SDK (streaming chat completions) against the OpenAI emulator over loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest

from tests.emulator_fixtures import EVENT_TIMEOUT_S, SdkClients, sdk_clients
from voicebot.emulators import Emulators, LlmReply, ToolCall, running_emulators, tokenize

MODEL = "gpt-4o-mini"
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a phone agent."},
    {"role": "user", "content": "What are your opening hours?"},
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "end_call",
            "description": "Hang up.",
            "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
        },
    }
]
SLOW_TOKENS_PER_SECOND = 20.0
TTFT_MS = 200.0
RETRY_AFTER_MS = 50


async def chat(client: openai.AsyncOpenAI, **extra: Any) -> list[Any]:
    """All chunks of one streamed completion."""
    kwargs: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "stream": True, **extra}
    stream = await client.chat.completions.create(**kwargs)
    return [chunk async for chunk in stream]


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_scripted_text_streams_as_token_deltas_then_usage(emu: Emulators, sdk: SdkClients) -> None:
    reply = "Sure, we open at nine. Anything else?"
    emu.llm.script.append(reply)
    chunks = await chat(sdk.openai(), stream_options={"include_usage": True})

    assert text_of(chunks) == reply
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == tokenize(reply)
    assert len(deltas) > 5  # word-ish pieces, not one blob
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert set(finishes[:-1]) == {None}
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == len(deltas)
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + len(deltas)
    await emu.wait_for_kind("llm", "complete", EVENT_TIMEOUT_S, tokens=len(deltas))


async def test_no_usage_chunk_unless_asked(emu: Emulators, sdk: SdkClients) -> None:
    chunks = await chat(sdk.openai())
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_tool_call_deltas_reassemble(emu: Emulators, sdk: SdkClients) -> None:
    emu.llm.script.append(LlmReply("Goodbye!", [ToolCall("end_call", {"reason": "caller said bye"})]))
    chunks = await chat(sdk.openai(), tools=TOOLS, tool_choice="auto")

    calls: dict[int, dict[str, str]] = {}
    firsts = []
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.index not in calls:
                firsts.append(delta)
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            else:
                assert delta.id is None
                assert delta.function.name is None
            calls[delta.index]["arguments"] += delta.function.arguments or ""
    assert text_of(chunks) == "Goodbye!"
    assert len(firsts) == 1
    assert firsts[0].type == "function"
    assert firsts[0].id
    assert calls[0]["name"] == "end_call"
    assert json.loads(calls[0]["arguments"]) == {"reason": "caller said bye"}
    assert sum(1 for c in chunks for _ in c.choices[0].delta.tool_calls or []) > 2  # arguments in fragments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_request_history_is_recorded(emu: Emulators, sdk: SdkClients) -> None:
    await chat(sdk.openai(), tools=TOOLS, temperature=0.3, max_completion_tokens=200)
    [request] = emu.llm.requests
    assert request.data["model"] == MODEL
    assert request.data["messages"] == MESSAGES
    assert request.data["tools"] == TOOLS
    assert request.data["stream"] is True
    assert request.data["body"]["temperature"] == 0.3


async def test_default_reply_answers_the_last_user_message(emu: Emulators, sdk: SdkClients) -> None:
    chunks = await chat(sdk.openai())
    assert "open" in text_of(chunks).lower()


async def test_non_streaming_completion(emu: Emulators, sdk: SdkClients) -> None:
    emu.llm.script.append(LlmReply("", [ToolCall("end_call", '{"reason": "done"}', id="call_1")]))
    completion = await sdk.openai().chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].id == "call_1"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"reason": "done"}


async def test_wrong_key_is_authentication_error(emu: Emulators, sdk: SdkClients) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await chat(sdk.openai(api_key="sk-wrong"))
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"


async def test_429_with_retry_after_is_retried_by_the_sdk(emu: Emulators, sdk: SdkClients) -> None:
    emu.llm.faults.fail_next = 1
    emu.llm.faults.fail_status = 429
    emu.llm.faults.retry_after_ms = RETRY_AFTER_MS
    emu.llm.script.append("Recovered.")
    chunks = await chat(sdk.openai(max_retries=1))
    assert text_of(chunks) == "Recovered."
    rejected = emu.select("llm", "rejected")
    request = emu.select("llm", "request")
    assert [e.data["status"] for e in rejected] == [429]
    assert len(request) == 1
    assert request[0].t - rejected[0].t >= RETRY_AFTER_MS / 1000


async def test_429_without_retries_is_rate_limit_error(emu: Emulators, sdk: SdkClients) -> None:
    emu.llm.faults.error_status = 429
    with pytest.raises(openai.RateLimitError) as caught:
        await chat(sdk.openai())
    assert caught.value.body["type"] == "rate_limit_error"


async def test_mid_stream_drop_raises_api_connection_error(emu: Emulators, sdk: SdkClients) -> None:
    emu.llm.faults.drop_after_tokens = 3
    emu.llm.script.append("One two three four five six seven.")
    stream = await sdk.openai().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    received: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIConnectionError):
        await consume()
    assert "".join(received) == "One two three"
    drop = await emu.wait_for_kind("llm", "drop", EVENT_TIMEOUT_S)
    assert drop.data["tokens_sent"] == 3


async def test_closing_the_stream_is_an_abort(emu: Emulators, sdk: SdkClients) -> None:
    emu.llm.config.tokens_per_second = SLOW_TOKENS_PER_SECOND
    emu.llm.script.append("This reply is long and slow, so the caller interrupts it long before it ends. " * 2)
    stream = await sdk.openai().chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            break
    await stream.close()
    abort = await emu.wait_for_kind("llm", "abort", EVENT_TIMEOUT_S)
    assert 0 < abort.data["tokens_sent"] < 10
    assert emu.select("llm", "complete") == []


async def test_time_to_first_token_and_token_rate(emu: Emulators, sdk: SdkClients) -> None:
    emu.llm.config.ttft_ms = TTFT_MS
    emu.llm.config.tokens_per_second = SLOW_TOKENS_PER_SECOND
    emu.llm.script.append("one two three four five")
    await chat(sdk.openai())
    request = emu.select("llm", "request")[-1]
    first = emu.select("llm", "first_token")[-1]
    complete = emu.select("llm", "complete")[-1]
    assert first.t - request.t >= TTFT_MS / 1000
    # 5 tokens at 20/s: 4 gaps of 50 ms after the first.
    assert complete.t - first.t >= 4 / SLOW_TOKENS_PER_SECOND * 0.9


async def test_stall_then_sdk_read_timeout(emu: Emulators, sdk: SdkClients) -> None:
    emu.llm.faults.stall_s = float("inf")
    client = sdk.openai().with_options(timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        await chat(client)
    await emu.wait_for_kind("llm", "abort", EVENT_TIMEOUT_S)


async def test_default_config_is_realistic() -> None:
    async with running_emulators() as emu, sdk_clients(emu) as sdk:
        await asyncio.wait_for(chat(sdk.openai()), EVENT_TIMEOUT_S)
        request = emu.select("llm", "request")[-1]
        first = emu.select("llm", "first_token")[-1]
    assert first.t - request.t >= emu.config.llm.ttft_ms / 1000


def _assistant_calls(*ids: str) -> dict[str, Any]:
    calls = [{"id": i, "type": "function", "function": {"name": "lookup", "arguments": "{}"}} for i in ids]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def _tool(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "ok"}


USER = {"role": "user", "content": "Hi"}
INVALID_SEQUENCES: list[tuple[str, list[dict[str, Any]], str]] = [
    ("a call without its tool message", [USER, _assistant_calls("call_a"), USER], "did not have response messages"),
    ("one of two unanswered", [USER, _assistant_calls("a", "b"), _tool("a")], "did not have response messages: b"),
    ("a tool message with no call", [USER, _tool("call_x")], "must be a response to a preceeding message"),
    ("a tool message for another id", [USER, _assistant_calls("a"), _tool("b")], "must be a response"),
    ("two answers to one id", [USER, _assistant_calls("a"), _tool("a"), _tool("a")], "must be a response"),
    ("a user message between", [USER, _assistant_calls("a", "b"), _tool("a"), USER, _tool("b")], "did not have"),
]


@pytest.mark.parametrize(("case", "messages", "error"), INVALID_SEQUENCES, ids=[c[0] for c in INVALID_SEQUENCES])
async def test_an_invalid_tool_sequence_is_refused_like_openai(
    emu: Emulators, sdk: SdkClients, case: str, messages: list[dict[str, Any]], error: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await chat(sdk.openai(), messages=messages, tools=TOOLS)
    assert caught.value.status_code == 400
    body: Any = caught.value.body
    assert error in body["message"], body
    assert body["type"] == "invalid_request_error"
    assert body["param"].startswith("messages.[")
    assert emu.llm.requests == []  # refused before it counts as a request
    [refused] = emu.select("llm", "invalid_messages")
    assert error in refused.data["error"]


async def test_a_valid_tool_sequence_is_accepted(emu: Emulators, sdk: SdkClients) -> None:
    messages = [USER, _assistant_calls("a", "b"), _tool("b"), _tool("a"), {"role": "assistant", "content": "Done."}]
    await chat(sdk.openai(), messages=[*messages, USER], tools=TOOLS)
    assert len(emu.llm.requests) == 1
    assert emu.select("llm", "invalid_messages") == []


async def test_several_tool_calls_per_reply_and_multi_round_replies(emu: Emulators, sdk: SdkClients) -> None:
    emu.llm.script.extend(
        [
            LlmReply("Let me check.", [ToolCall("hours", {"day": "monday"}), ToolCall("weather", '{"city": "Oslo"}')]),
            LlmReply(tool_calls=[ToolCall("book", {"time": "19:00"}, id="call_book")]),
            "All done.",
        ]
    )
    client = sdk.openai()
    first = await chat(client, tools=TOOLS)
    heads = [d for c in first for d in c.choices[0].delta.tool_calls or [] if d.id]
    assert [(d.index, d.function.name) for d in heads] == [(0, "hours"), (1, "weather")]
    assert heads[0].id != heads[1].id
    history = [*MESSAGES, _assistant_calls(heads[0].id, heads[1].id), _tool(heads[0].id), _tool(heads[1].id)]
    second = await chat(client, messages=history, tools=TOOLS)
    [head] = [d for c in second for d in c.choices[0].delta.tool_calls or [] if d.id]
    assert head.id == "call_book"
    assert text_of(second) == ""
    history += [_assistant_calls("call_book"), _tool("call_book")]
    assert text_of(await chat(client, messages=history, tools=TOOLS)) == "All done."


async def test_default_reply_reads_a_tool_result(emu: Emulators, sdk: SdkClients) -> None:
    messages = [USER, _assistant_calls("a"), {"role": "tool", "tool_call_id": "a", "content": "Open until six."}]
    assert "Open until six." in text_of(await chat(sdk.openai(), messages=messages))
