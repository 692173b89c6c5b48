"""What a tool is: its schema for the model, its arguments check, and the one-line outcomes the model reads.

A tool is offered to the model exactly the same way whether it was declared in the tools file (an HTTP call) or
written in Python: a name, a description, a JSON-Schema ``parameters`` object and an async handler.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from voicebot.errors import VoicebotError

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""OpenAI's rule for a function name."""
END_CALL = "end_call"
TRANSFER_CALL = "transfer_call"
CONTROL_TOOLS = frozenset({END_CALL, TRANSFER_CALL})
"""Built in: they act on the call itself, so they run only from a reply that played to its end."""
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_RESULT_CHARS = 2000
TRUNCATED = " …[truncated]"

Outcome = Literal[
    "ok",
    "error",
    "timeout",
    "http_error",
    "invalid_response",
    "invalid_arguments",
    "unknown_tool",
    "refused",
    "cancelled",
    "still_running",
    "not_done",
]
"""How a tool call ended: ``ok`` carries the tool's answer, everything else one line the model cannot mistake
for an answer (see :func:`failure_line`)."""


class ToolFailed(VoicebotError):
    """A tool did not answer; ``reason`` is one short line for the model (never a secret, never a traceback)."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome: Outcome = outcome
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who the call is with: sent to every tool along with the model's arguments."""

    call_sid: str
    caller: str = ""
    """Twilio's ``From``."""
    called: str = ""
    """Twilio's ``To``."""


Handler = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]
"""``await handler(arguments, context)``: the answer (str, or anything JSON-serialisable), or raise ToolFailed."""


@dataclass(frozen=True)
class Tool:
    """One tool the model may call."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    handler: Handler
    side_effects: bool = True
    """True: the call changes something, so a barge-in never cancels it and its result always reaches the history.
    False: a lookup, cancelled with the reply that asked for it."""
    say: str | None = None
    """Said (cached audio) if the tool keeps the caller waiting; None: the default filler."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS
    _validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_validator", Draft202012Validator(dict(self.parameters)))

    def schema(self) -> dict[str, Any]:
        """The ``tools`` entry of a chat completions request."""
        return function_schema(self.name, self.description, self.parameters)

    def check_arguments(self, arguments: Mapping[str, Any]) -> str | None:
        """None when the arguments fit the schema; else the first problem, in a few words."""
        error = next(iter(sorted(self._validator.iter_errors(dict(arguments)), key=lambda e: e.path)), None)
        if error is None:
            return None
        where = ".".join(str(p) for p in error.absolute_path)
        return f"{where}: {error.message}" if where else error.message

    def result_text(self, answer: Any) -> str:
        """The tool message's content: text as is, anything else as JSON, cut to ``max_result_chars``."""
        text = answer if isinstance(answer, str) else orjson.dumps(answer, default=str).decode()
        return truncate(text, self.max_result_chars)


def function_schema(name: str, description: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def check_parameters_schema(parameters: Any) -> str | None:
    """None for a usable ``parameters`` object (a JSON Schema of type object); else what is wrong with it."""
    if not isinstance(parameters, Mapping):
        return "must be a JSON-Schema object (a table, or a JSON string holding an object)"
    if parameters.get("type") != "object":
        return 'must have "type": "object" (the model passes its arguments as one object)'
    try:
        Draft202012Validator.check_schema(dict(parameters))
    except SchemaError as exc:
        return f"not a valid JSON Schema: {exc.message}"
    return None


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    if limit <= 2 * len(TRUNCATED):  # too short for the marker to leave room for the answer
        return text[:limit]
    return text[: limit - len(TRUNCATED)] + TRUNCATED


def failure_line(outcome: Outcome, tool: str, reason: str) -> str:
    """One short line for the model, tagged so it cannot be mistaken for the tool's answer."""
    tag = {
        "cancelled": "cancelled, no result",
        "still_running": "still running, no result yet",
        "refused": "not run",
        "not_done": "not done",
    }.get(outcome, "error, no result")
    return f"[{tag}] {tool}: {reason}"
