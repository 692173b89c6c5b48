"""Settings: TOML, then .env, then the environment; errors name the setting and never show secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_settings
from voicebot.settings import DEFAULT_CONFIG, ENV_TO_FIELD, Settings, SettingsError, env_name, load_settings

REPO = Path(__file__).resolve().parent.parent
REQUIRED_NAMES = {
    "VOICEBOT_HOST", "VOICEBOT_PORT", "VOICEBOT_PUBLIC_URL", "VOICEBOT_GREETING", "VOICEBOT_LOG_FORMAT",
    "VOICEBOT_LOG_LEVEL", "DEEPGRAM_API_KEY", "DEEPGRAM_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL",
    "OPENAI_MODEL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_BASE_URL", "DEEPGRAM_TTS_MODEL",
    "DEEPGRAM_TTS_ENCODING", "DEEPGRAM_TTS_SAMPLE_RATE", "DEEPGRAM_STT_MODEL",
}  # fmt: skip


def test_every_documented_environment_name_exists() -> None:
    assert REQUIRED_NAMES <= set(ENV_TO_FIELD)
    assert env_name("port") == "VOICEBOT_PORT"
    assert env_name("deepgram_api_key") == "DEEPGRAM_API_KEY"


def test_shipped_toml_documents_exactly_the_code_defaults() -> None:
    shipped = load_settings(environ={}, env_file=None, config_path=REPO / DEFAULT_CONFIG)
    assert shipped == Settings()


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.port, s.public_url) == ("127.0.0.1", 8080, "http://127.0.0.1:8080")
    assert s.stream_url == "ws://127.0.0.1:8080/media"
    assert (s.deepgram_tts_model, s.deepgram_stt_model) == ("aura-2-asteria-en", "nova-3")
    assert s.deepgram_base_url == "https://api.deepgram.com"
    assert s.deepgram_ws_url == "wss://api.deepgram.com"
    assert s.twilio_api_base_url == "https://api.twilio.com"


def test_public_url_gives_stream_url_and_signed_urls() -> None:
    s = Settings(public_url="https://bot.example.com/")
    assert s.stream_url == "wss://bot.example.com/media"
    assert s.public_http_url("/voice?x=1") == "https://bot.example.com/voice?x=1"


def test_precedence_toml_then_dotenv_then_environment(tmp_path: Path) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text('port = 1111\nopenai_model = "from-toml"\ngreeting = "toml hello"\n')
    dotenv = tmp_path / ".env"
    dotenv.write_text("VOICEBOT_PORT=2222\nOPENAI_MODEL=from-dotenv\nUNRELATED=1\n")
    s = load_settings(environ={"VOICEBOT_PORT": "3333"}, env_file=dotenv, config_path=toml)
    assert s.port == 3333
    assert s.openai_model == "from-dotenv"
    assert s.greeting == "toml hello"


def test_voicebot_config_names_the_toml_file(tmp_path: Path) -> None:
    toml = tmp_path / "alt.toml"
    toml.write_text('openai_model = "alt"\n')
    assert load_settings(environ={"VOICEBOT_CONFIG": str(toml)}, env_file=None).openai_model == "alt"
    with pytest.raises(SettingsError, match="VOICEBOT_CONFIG: no such file"):
        load_settings(environ={"VOICEBOT_CONFIG": str(tmp_path / "missing.toml")}, env_file=None)


def test_bad_value_names_the_setting_and_its_origin() -> None:
    with pytest.raises(SettingsError, match=r"VOICEBOT_PORT \(environment\)"):
        load_settings(environ={"VOICEBOT_PORT": "eighty"}, env_file=None)


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text("prot = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'prot'"):
        load_settings(environ={}, env_file=None, config_path=toml)


def test_invalid_toml_is_a_clear_error(tmp_path: Path) -> None:
    toml = tmp_path / "v.toml"
    toml.write_text("port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(environ={}, env_file=None, config_path=toml)


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [("DEEPGRAM_TTS_ENCODING", "linear16", "mulaw"), ("DEEPGRAM_TTS_SAMPLE_RATE", "24000", "8000")],
)
def test_tts_format_other_than_mulaw_8000_is_refused(name: str, value: str, needle: str) -> None:
    with pytest.raises(SettingsError, match=name) as info:
        load_settings(environ={name: value}, env_file=None)
    assert needle in str(info.value)


def test_errors_never_echo_secret_values() -> None:
    secret = "sk-very-secret-value-123"
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"OPENAI_API_KEY": secret, "VOICEBOT_PORT": secret}, env_file=None)
    assert secret not in str(info.value)
    s = load_settings(environ={"OPENAI_API_KEY": secret}, env_file=None)
    assert secret not in repr(s)
    assert secret not in str(s.redacted())
    assert s.redacted()["OPENAI_API_KEY"] == "<set>"
    assert s.redacted()["DEEPGRAM_API_KEY"] == "<unset>"


def test_missing_credentials_are_listed() -> None:
    assert Settings().missing() == ["DEEPGRAM_API_KEY", "OPENAI_API_KEY"]
    assert Settings(deepgram_api_key="a", openai_api_key="b").missing() == []


def test_non_loopback_without_auth_token_is_refused_unless_allowed() -> None:
    with pytest.raises(SettingsError, match="TWILIO_AUTH_TOKEN"):
        Settings(host="0.0.0.0").check_startup()
    Settings(host="0.0.0.0", twilio_auth_token="t").check_startup()
    Settings(host="0.0.0.0", allow_unsigned=True).check_startup()
    Settings(host="localhost").check_startup()
    Settings(host="::1").check_startup()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicebot", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin", **(env or {})},
    )  # fmt: skip


def test_cli_help_documents_the_flags() -> None:
    out = _cli("--help")
    assert out.returncode == 0
    for flag in ("--workers", "--host", "--port", "--config", "--check-config"):
        assert flag in out.stdout


def test_cli_check_config_hides_secrets() -> None:
    secret = "dg-super-secret-key-42"
    out = _cli("--check-config", env={"DEEPGRAM_API_KEY": secret, "TWILIO_AUTH_TOKEN": secret + "x"})
    assert out.returncode == 0, out.stderr
    assert secret not in out.stdout + out.stderr
    assert '"DEEPGRAM_API_KEY": "<set>"' in out.stdout


def test_cli_refuses_public_host_without_auth_token_and_says_why() -> None:
    out = _cli("--host", "0.0.0.0", "--port", "0")
    assert out.returncode == 2
    assert "TWILIO_AUTH_TOKEN" in out.stderr


def test_cli_reports_bad_setting_and_exits_2() -> None:
    out = _cli("--check-config", env={"DEEPGRAM_TTS_ENCODING": "mp3"})
    assert out.returncode == 2
    assert "DEEPGRAM_TTS_ENCODING" in out.stderr


def test_flux_is_selected_by_the_model_and_its_eager_threshold_stays_below_the_end_of_turn() -> None:
    assert not load_settings(environ={}, env_file=None).flux
    flux = load_settings(
        environ={"DEEPGRAM_STT_MODEL": "flux-general-en", "DEEPGRAM_EAGER_EOT_THRESHOLD": "0.6"}, env_file=None
    )
    assert flux.flux
    assert flux.deepgram_eager_eot_threshold == 0.6
    with pytest.raises(SettingsError, match=r"DEEPGRAM_EAGER_EOT_THRESHOLD \(environment\).*must not exceed"):
        load_settings(environ={"DEEPGRAM_EAGER_EOT_THRESHOLD": "0.6", "DEEPGRAM_EOT_THRESHOLD": "0.5"}, env_file=None)


@pytest.mark.parametrize(
    ("provider", "name"), [("elevenlabs", "ELEVENLABS_VOICE_ID"), ("cartesia", "CARTESIA_VOICE_ID")]
)
def test_a_chosen_voice_without_its_voice_id_is_a_startup_error(provider: str, name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        make_settings(tts_provider=provider).check_startup()
    make_settings(tts_provider=provider, **{name.lower(): "voice-1"}).check_startup()
