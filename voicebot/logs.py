"""Structured logging: structlog for our events, stdlib logging (aiohttp, SDKs) through the same renderer.

Per-call context (``call_sid``, ``stream_sid``) is bound with contextvars once at the edge, before the call's
tasks are created, so every line of that call carries it. A last processor redacts secrets from every string,
including rendered tracebacks: the settings' secret values and anything shaped like a stream token.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
import structlog
import structlog.tracebacks
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
TOKEN_PREFIX = "vbt1"
"""Stream tokens (voicebot/twilio/security.py) start with this; the redactor removes any such token from a line."""
_TOKEN_RE = re.compile(re.escape(TOKEN_PREFIX) + r"\.[0-9]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")


class SecretRedactor:
    """A structlog processor that replaces secret values in every string field with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if TOKEN_PREFIX in text:
            text = _TOKEN_RE.sub(REDACTED, text)
        return text

    def redact(self, value: Any) -> Any:
        """``value`` with every secret replaced, through dicts, lists and tuples (for transcripts)."""
        return self._value(value)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._value(v) for v in value)
        if isinstance(value, BaseException):
            return self.scrub(repr(value))
        return value

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        return {k: self._value(v) for k, v in event_dict.items()}


REDACTOR = SecretRedactor()


def _orjson_dumps(obj: MutableMapping[str, Any], default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure_logging(level: str = "info", fmt: str = "auto", secrets: Iterable[str] = (), stream: Any = None) -> None:
    """Configure structlog and stdlib logging once per process."""
    stream = stream or sys.stderr
    REDACTOR.update(secrets)
    use_json = fmt == "json" or (fmt == "auto" and not (hasattr(stream, "isatty") and stream.isatty()))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if use_json:
        transformer = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        shared.append(structlog.processors.ExceptionRenderer(transformer))
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    # The redactor runs after tracebacks are rendered to text, so secrets in exception messages are caught too.
    shared.append(REDACTOR)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter that would log per request or per frame at INFO.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "websockets", "openai", "deepgram"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiohttp.access").setLevel(max(logging.INFO, root.level))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
