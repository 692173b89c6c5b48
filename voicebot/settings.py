"""Typed settings: ``config/voicebot.toml``, then ``.env``, then ``$CREDENTIALS_DIRECTORY/voicebot.env`` (systemd),
then environment variables (later wins).

Every setting has one field name (the TOML key) and one environment name: provider settings keep their
provider's prefix (``DEEPGRAM_API_KEY``), the rest get ``VOICEBOT_`` (``port`` ↔ ``VOICEBOT_PORT``).
Errors name the setting and never echo its value, so a mistyped secret cannot leak into a terminal or a log.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_CONFIG = Path("config/voicebot.toml")
_PROVIDER_PREFIXES = ("deepgram_", "openai_", "twilio_", "elevenlabs_", "cartesia_")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def _is_loopback_name(host: str) -> bool:
    """True for a loopback name or address (a bare host, no port)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SettingsError(ValueError):
    """A setting is missing, unknown or invalid; the message names it."""


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return field.upper() if field.startswith(_PROVIDER_PREFIXES) else f"VOICEBOT_{field.upper()}"


class Settings(BaseModel):
    """All of voicebot's settings; see config/voicebot.toml for what each one does."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    # server
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = ""
    allow_unsigned: bool = False
    token_secret: SecretStr | None = None
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    dev_page: bool | None = None
    dev_remote_calls: bool = False
    metrics_token: SecretStr | None = None
    # limits
    max_calls: int = Field(200, ge=1)
    max_message_bytes: int = Field(64 * 1024, ge=1024)
    start_timeout_s: float = Field(10.0, gt=0)
    idle_media_timeout_s: float = Field(15.0, gt=0)
    max_call_duration_s: float = Field(3600.0, gt=0)
    drain_timeout_s: float = Field(30.0, ge=0)
    send_stall_timeout_s: float = Field(10.0, gt=0)
    # conversation
    greeting: str = "Hello! Thanks for calling. How can I help you today?"
    apology: str = "Sorry, I'm having trouble right now. Could you say that again?"
    idle_prompt: str = "Are you still there?"
    goodbye: str = "Thanks for calling. Goodbye!"
    prompt_file: Path = Path("config/system_prompt.md")
    transfer_number: str = ""
    machine_message: str = (
        "Hello, this is an automated call from your voice assistant. Please call us back when you can. Goodbye."
    )
    transcript_dir: Path = Path("transcripts")
    idle_timeout_s: float = Field(8.0, gt=0)
    idle_reprompts: int = Field(2, ge=0)
    barge_in: bool = True
    barge_in_min_speech_ms: int = Field(100, ge=20)
    barge_in_confirm_ms: int = Field(1200, ge=100)
    barge_in_grace_ms: int = Field(1500, ge=0)
    preemptive_generation: bool = True
    preemptive_silence_ms: int = Field(60, ge=20, le=2000)
    preemptive_max_attempts: int = Field(2, ge=1, le=5)
    backchannels: tuple[str, ...] = (
        "uh-huh", "uh huh", "mm-hmm", "mhm", "mm", "hmm", "yeah", "yep", "yes", "okay", "ok", "right", "sure",
        "got it", "i see", "alright", "all right",
    )  # fmt: skip
    # tools
    tools_file: Path | None = None
    tools_module: str = ""
    tools_secret: SecretStr | None = None
    tool_filler: str = "One moment."
    tool_still_working: str = "Still working on it, thanks for waiting."
    tool_filler_after_ms: int = Field(700, ge=0)
    tool_still_working_after_s: float = Field(5.0, gt=0)
    tool_max_parallel: int = Field(4, ge=1, le=32)
    tool_max_rounds: int = Field(3, ge=1, le=20)
    tool_max_same_call: int = Field(2, ge=1)
    tool_settle_s: float = Field(3.0, ge=0)
    # text-to-speech: which voice
    tts_provider: Literal["deepgram", "elevenlabs", "cartesia"] = "deepgram"
    # Deepgram
    deepgram_api_key: SecretStr | None = None
    deepgram_base_url: str = "https://api.deepgram.com"
    deepgram_stt_model: str = "nova-3"
    deepgram_language: str = "en-US"
    deepgram_endpointing_ms: int = Field(300, ge=10)
    deepgram_utterance_end_ms: int = Field(1000, ge=1000)
    deepgram_eot_threshold: float | None = Field(None, ge=0.5, le=0.9)
    deepgram_eager_eot_threshold: float | None = Field(None, ge=0.3, le=0.9)
    deepgram_eot_timeout_ms: int | None = Field(None, ge=500, le=10000)
    deepgram_tts_model: str = "aura-2-asteria-en"
    deepgram_tts_encoding: str = "mulaw"
    deepgram_tts_sample_rate: int = 8000
    deepgram_tts_transport: Literal["rest", "websocket"] = "rest"
    # ElevenLabs
    elevenlabs_api_key: SecretStr | None = None
    elevenlabs_voice_id: str = ""
    elevenlabs_model: str = "eleven_flash_v2_5"
    elevenlabs_base_url: str = "https://api.elevenlabs.io"
    # Cartesia
    cartesia_api_key: SecretStr | None = None
    cartesia_voice_id: str = ""
    cartesia_model: str = "sonic-2"
    cartesia_base_url: str = "https://api.cartesia.ai"
    cartesia_version: str = "2025-04-16"
    # OpenAI
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    openai_temperature: float = Field(0.4, ge=0, le=2)
    openai_max_tokens: int = Field(300, ge=1)
    # Twilio
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr | None = None
    twilio_api_base_url: str = "https://api.twilio.com"
    twilio_from_number: str = ""

    @field_validator("twilio_from_number")
    @classmethod
    def _e164(cls, value: str) -> str:
        if value and not E164.fullmatch(value):
            raise ValueError("must be a phone number in E.164 form, like +15551234567")
        return value

    @field_validator("tools_file", mode="before")
    @classmethod
    def _no_tools_file(cls, value: Any) -> Any:
        return None if value == "" else value  # VOICEBOT_TOOLS_FILE= (empty) means no custom tools

    @field_validator("deepgram_tts_encoding")
    @classmethod
    def _mulaw_only(cls, value: str) -> str:
        if value.lower() != "mulaw":
            raise ValueError("Twilio Media Streams play only mu-law at 8000 Hz: set it to 'mulaw'")
        return "mulaw"

    @field_validator("deepgram_tts_sample_rate")
    @classmethod
    def _8k_only(cls, value: int) -> int:
        if value != 8000:
            raise ValueError("Twilio Media Streams play only mu-law at 8000 Hz: set it to 8000")
        return value

    @field_validator("cartesia_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError("must be an API version date like 2025-04-16")
        return value

    @field_validator(
        "public_url", "deepgram_base_url", "openai_base_url", "twilio_api_base_url", "elevenlabs_base_url",
        "cartesia_base_url",
    )  # fmt: skip
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
            raise ValueError("must be an absolute http(s):// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _public_url_default(self) -> Settings:
        if not self.public_url:
            host = f"[{self.host}]" if ":" in self.host else self.host
            object.__setattr__(self, "public_url", f"http://{host}:{self.port}")
        return self

    @field_validator("deepgram_eager_eot_threshold")
    @classmethod
    def _eager_below_eot(cls, value: float | None, info: ValidationInfo) -> float | None:
        eot = info.data.get("deepgram_eot_threshold")
        if value is not None and value > (0.7 if eot is None else eot):
            raise ValueError("must not exceed DEEPGRAM_EOT_THRESHOLD (Flux's default 0.7)")
        return value

    # --- derived values ---

    @property
    def flux(self) -> bool:
        """Listening through Deepgram Flux (``/v2/listen``, turn events) rather than Nova (``/v1/listen``)."""
        return self.deepgram_stt_model.startswith("flux")

    @property
    def stream_url(self) -> str:
        """The ``<Stream url>``: the public URL in its ws:// or wss:// form, plus /media."""
        parts = urlsplit(self.public_url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/media", "", ""))

    def public_http_url(self, path_qs: str) -> str:
        """The public http(s) URL of a request path (what Twilio signed)."""
        parts = urlsplit(self.public_url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{path_qs}"

    @property
    def deepgram_ws_url(self) -> str:
        """The WebSocket base (live STT, speak socket), derived from DEEPGRAM_BASE_URL (https → wss, http → ws)."""
        return ws_url(self.deepgram_base_url)

    @property
    def cartesia_ws_url(self) -> str:
        """Cartesia's TTS socket, derived from CARTESIA_BASE_URL (https → wss, http → ws)."""
        return ws_url(self.cartesia_base_url) + "/tts/websocket"

    @property
    def is_loopback(self) -> bool:
        return _is_loopback_name(self.host)

    @property
    def public_is_loopback(self) -> bool:
        """True if ``public_url`` names this machine: nothing outside can reach the bot through it."""
        return _is_loopback_name(urlsplit(self.public_url).hostname or "")

    def missing(self) -> list[str]:
        """Names of the credentials a call needs and that are not set."""
        names = []
        if self.deepgram_api_key is None or not self.deepgram_api_key.get_secret_value():
            names.append("DEEPGRAM_API_KEY")
        if self.openai_api_key is None or not self.openai_api_key.get_secret_value():
            names.append("OPENAI_API_KEY")
        # Only what the chosen voice needs: an unused provider's settings may stay empty.
        if self.tts_provider == "elevenlabs":
            names += _unset(
                ("ELEVENLABS_API_KEY", self.elevenlabs_api_key), ("ELEVENLABS_VOICE_ID", self.elevenlabs_voice_id)
            )
        elif self.tts_provider == "cartesia":
            names += _unset(("CARTESIA_API_KEY", self.cartesia_api_key), ("CARTESIA_VOICE_ID", self.cartesia_voice_id))
        return names

    def secret_values(self) -> list[str]:
        """Every secret value set, for the log redactor."""
        secrets = [
            self.deepgram_api_key,
            self.openai_api_key,
            self.twilio_auth_token,
            self.token_secret,
            self.metrics_token,
            self.elevenlabs_api_key,
            self.cartesia_api_key,
            self.tools_secret,
        ]
        return [s.get_secret_value() for s in secrets if s is not None and len(s.get_secret_value()) >= 4]

    def check_startup(self) -> None:
        """Refuse configurations that are unsafe or unable to serve; raise SettingsError saying why."""
        # The chosen voice's voice id is configuration, not a credential that may arrive later: without it no
        # call could speak, so say so now (a missing API key stays a /healthz "missing" entry, like Deepgram's).
        voice_ids = {"elevenlabs": ("ELEVENLABS_VOICE_ID", self.elevenlabs_voice_id),
                     "cartesia": ("CARTESIA_VOICE_ID", self.cartesia_voice_id)}  # fmt: skip
        if self.tts_provider in voice_ids and not voice_ids[self.tts_provider][1]:
            name = voice_ids[self.tts_provider][0]
            raise SettingsError(f"VOICEBOT_TTS_PROVIDER={self.tts_provider} needs {name}: set the voice to speak with")
        if self.twilio_auth_token is not None or self.allow_unsigned:
            return
        if not self.is_loopback:
            raise SettingsError(
                f"refusing to listen on {self.host} without TWILIO_AUTH_TOKEN: anyone could open calls and "
                "spend your Deepgram and OpenAI credits. Set TWILIO_AUTH_TOKEN, bind VOICEBOT_HOST to "
                "127.0.0.1, or set VOICEBOT_ALLOW_UNSIGNED=true if a proxy in front checks requests."
            )
        if not self.public_is_loopback:
            # A public URL means a proxy or tunnel forwards the internet to us: every request then arrives
            # from loopback, so binding to 127.0.0.1 protects nothing.
            raise SettingsError(
                "refusing to serve VOICEBOT_PUBLIC_URL (a non-loopback URL: a proxy or tunnel makes the bot "
                "reachable from the internet) without TWILIO_AUTH_TOKEN: anyone could open calls and spend your "
                "Deepgram and OpenAI credits. Set TWILIO_AUTH_TOKEN, or set VOICEBOT_ALLOW_UNSIGNED=true if the "
                "proxy in front checks Twilio's signatures."
            )

    def redacted(self) -> dict[str, Any]:
        """Every setting by environment name, secrets shown only as set or unset (for --check-config)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "<set>"
            elif name in _SECRET_FIELDS:
                value = "<unset>"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[env_name(name)] = value
        return out


_SECRET_FIELDS = frozenset(
    {"deepgram_api_key", "openai_api_key", "twilio_auth_token", "token_secret", "metrics_token"}
    | {"elevenlabs_api_key", "cartesia_api_key", "tools_secret"}
)


def ws_url(base_url: str) -> str:
    """The WebSocket form of an http(s) base URL (https → wss, http → ws), path kept."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, "", ""))


def _unset(*pairs: tuple[str, SecretStr | str | None]) -> list[str]:
    """The names whose value is unset or empty."""
    missing = []
    for name, value in pairs:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not text:
            missing.append(name)
    return missing


ENV_TO_FIELD = {env_name(name): name for name in Settings.model_fields}


def _format_error(exc: ValidationError, origin: Mapping[str, str]) -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        if field in Settings.model_fields:
            label = f"{env_name(field)} ({origin.get(field, 'default')})"
        else:
            label = f"unknown setting {field!r} ({origin.get(field, 'config')})"
        lines.append(f"{label}: {err['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


CREDENTIAL_NAME = "voicebot.env"
"""systemd's ``LoadCredential=voicebot.env:/etc/voicebot/voicebot.env`` (deploy/voicebot.service): a .env-style
file in ``$CREDENTIALS_DIRECTORY``, between .env and the environment."""


def _credential_file(environ: Mapping[str, str]) -> dict[str, str]:
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return {}
    path = Path(directory) / CREDENTIAL_NAME
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load settings from the TOML file, .env and the environment, then ``overrides`` (CLI flags)."""
    environ = os.environ if environ is None else environ
    dotenv: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        dotenv = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    credential = _credential_file(environ)
    layered_env = {
        **dotenv,
        **credential,
        **{k: v for k, v in environ.items() if k in ENV_TO_FIELD or k == "VOICEBOT_CONFIG"},
    }

    explicit = config_path or (Path(p) if (p := layered_env.get("VOICEBOT_CONFIG")) else None)
    path = explicit or DEFAULT_CONFIG
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
        origin = dict.fromkeys(data, str(path))
    elif explicit is not None:
        raise SettingsError(f"VOICEBOT_CONFIG: no such file: {path}")

    for env, value in layered_env.items():
        field = ENV_TO_FIELD.get(env)
        if field is None:
            continue
        data[field] = _split_list(value) if field == "backchannels" else value
        origin[field] = "environment" if env in environ else (CREDENTIAL_NAME if env in credential else ".env")
    for field, value in (overrides or {}).items():
        if value is not None:
            data[field] = value
            origin[field] = "command line"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_format_error(exc, origin)) from None
