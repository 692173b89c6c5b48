"""Tools declared in the tools file (``VOICEBOT_TOOLS_FILE``): one ``[[tool]]`` table per HTTP endpoint.

The bot POSTs ``{"tool", "arguments", "call_sid", "from", "to"}`` as JSON (GET: the arguments as query
parameters) with ``X-Voicebot-Signature: sha256=<hex HMAC-SHA256 of the exact body>`` keyed with
``VOICEBOT_TOOLS_SECRET``; for GET the signed bytes are the query string. The answer (JSON or text) becomes the
tool message. URLs come only from this file, never from the model.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from yarl import URL

from voicebot.tools.base import (
    CONTROL_TOOLS,
    DEFAULT_MAX_RESULT_CHARS,
    DEFAULT_TIMEOUT_S,
    NAME_RE,
    Tool,
    ToolContext,
    ToolFailed,
    check_parameters_schema,
)

SIGNATURE_HEADER = "X-Voicebot-Signature"
MAX_RESPONSE_BYTES = 256 * 1024
"""Read at most this much of an answer; the tool message is cut to ``max_result_chars`` anyway."""
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ToolsFileError(ValueError):
    """The tools file is missing or invalid; the message names the tool and the key, never a header's value."""


class DeclaredTool(BaseModel):
    """One ``[[tool]]`` table, exactly the keys the README documents."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str
    description: str = Field(min_length=1)
    parameters: dict[str, Any] | str
    url: str
    method: Literal["GET", "POST"] = "POST"
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=300)
    static: dict[str, Any] = Field(default_factory=dict)
    side_effects: bool = True
    say: str | None = None
    max_result_chars: int = Field(DEFAULT_MAX_RESULT_CHARS, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("must be 1-64 letters, digits, '_' or '-'")
        if value in CONTROL_TOOLS:
            raise ValueError(f"{value} is built in")
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any] | str) -> dict[str, Any]:
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ValueError("not valid JSON") from None
        problem = check_parameters_schema(value)
        if problem is not None:
            raise ValueError(problem)
        assert isinstance(value, dict)
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http:// or https:// URL")
        return value

    @property
    def schema_parameters(self) -> dict[str, Any]:
        assert isinstance(self.parameters, dict)  # parsed by the validator
        return self.parameters


def load_tools_file(path: Path, environ: Mapping[str, str]) -> list[DeclaredTool]:
    """Parse and check the tools file; ``${ENV}`` in header values resolved from ``environ``."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ToolsFileError(f"VOICEBOT_TOOLS_FILE: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ToolsFileError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"tool"})
    if unknown:
        raise ToolsFileError(f"{path}: unknown key {unknown[0]!r} (tools are [[tool]] tables)")
    tables = data.get("tool", [])
    if not isinstance(tables, list):
        raise ToolsFileError(f"{path}: 'tool' must be an array of tables ([[tool]])")
    tools: list[DeclaredTool] = []
    for index, table in enumerate(tables):
        label = f"tool #{index + 1}"
        if isinstance(table, dict) and isinstance(table.get("name"), str):
            label = f"tool {table['name']!r}"
        where = f"{path}: {label}"
        if not isinstance(table, dict):
            raise ToolsFileError(f"{where}: must be a table")
        try:
            declared = DeclaredTool.model_validate(table)
        except ValidationError as exc:
            err = exc.errors(include_input=False, include_url=False)[0]
            key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "?"
            key = key.split(".function-")[0].split(".str")[0]  # drop pydantic's union-branch suffixes
            raise ToolsFileError(f"{where}: key {key!r}: {err['msg']}") from None
        if any(t.name == declared.name for t in tools):
            raise ToolsFileError(f"{where}: key 'name': declared twice")
        headers = {k: SecretStr(_resolve(where, k, v.get_secret_value(), environ)) for k, v in declared.headers.items()}
        tools.append(declared.model_copy(update={"headers": headers}))
    return tools


def _resolve(where: str, header: str, value: str, environ: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ToolsFileError(f"{where}: key 'headers.{header}': environment variable {name} is not set")
        return environ[name]

    return _ENV_REF.sub(substitute, value)


def sign(secret: str, body: bytes) -> str:
    """The ``X-Voicebot-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class HttpTool:
    """Calls a declared tool's endpoint (the handler of its :class:`Tool`)."""

    def __init__(self, declared: DeclaredTool, session: aiohttp.ClientSession, secret: SecretStr | None) -> None:
        self._declared = declared
        self._session = session
        self._secret = secret

    def tool(self) -> Tool:
        d = self._declared
        return Tool(
            name=d.name,
            description=d.description,
            parameters=d.schema_parameters,
            handler=self,
            side_effects=d.side_effects,
            say=d.say,
            timeout_s=d.timeout_s,
            max_result_chars=d.max_result_chars,
        )

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> str:
        d = self._declared
        merged = {**arguments, **d.static}  # static wins: the model cannot override what the deployer fixed
        url = URL(d.url)
        if d.method == "GET":
            query = urlencode({k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in merged.items()})
            signed = query.encode()
            body = None
            if query:
                url = URL(d.url + ("&" if url.query_string else "?") + query, encoded=True)
        else:
            payload = {
                "tool": d.name,
                "arguments": merged,
                "call_sid": context.call_sid,
                "from": context.caller,
                "to": context.called,
            }
            body = signed = orjson.dumps(payload)
        headers = {k: v.get_secret_value() for k, v in d.headers.items()}
        headers["X-Voicebot-Tool"] = d.name
        headers["X-Voicebot-Call-Sid"] = context.call_sid
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret.get_secret_value(), signed)
        try:
            async with self._session.request(d.method, url, data=body, headers=headers, allow_redirects=False) as resp:
                raw = await resp.content.read(MAX_RESPONSE_BYTES)
                status, content_type = resp.status, resp.content_type
        except aiohttp.ClientError as exc:
            raise ToolFailed("error", f"the service could not be reached ({type(exc).__name__})") from None
        if not 200 <= status < 300:
            raise ToolFailed("http_error", f"the service answered HTTP {status}")
        text = raw.decode("utf-8", errors="replace")
        complete = len(raw) < MAX_RESPONSE_BYTES  # a cut answer is truncated for the model anyway
        if complete and (content_type == "application/json" or content_type.endswith("+json")):
            try:
                orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ToolFailed("invalid_response", "the service's answer was not valid JSON") from None
        return text
