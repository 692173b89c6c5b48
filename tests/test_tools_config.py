"""Loading tools: the tools file's exact shape and its startup errors (naming the tool and the key, never a
secret), Python tool modules, argument checks and the signature. Pure: no sockets."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from voicebot.__main__ import main
from voicebot.providers.base import ToolCall
from voicebot.settings import SettingsError
from voicebot.tools import ToolRegistry, load_tool_specs, sign
from voicebot.tools.base import check_parameters_schema, failure_line, truncate

GOOD = """
[[tool]]
name = "book_table"
description = "Book a table."
parameters = '{"type": "object", "properties": {"people": {"type": "integer"}}, "required": ["people"]}'
url = "https://tools.example.com/book"
headers = { Authorization = "Bearer ${BOOKING_TOKEN}", X-Static = "plain" }
static = { restaurant = "main" }
say = "Booking it now."

[[tool]]
name = "opening_hours"
description = "Hours."
parameters = { type = "object", properties = { day = { type = "string", enum = ["mon", "tue"] } } }
url = "http://127.0.0.1:9/hours"
method = "get"
side_effects = false
timeout_s = 2.5
max_result_chars = 100
"""
SECRET = "booking-token-93ac1e"


def specs_for(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Any:
    path = tmp_path / "tools.toml"
    path.write_text(text)
    return load_tool_specs(make_settings(tools_file=path), {"BOOKING_TOKEN": SECRET} if environ is None else environ)


def test_the_documented_shape_loads_with_its_defaults(tmp_path: Path) -> None:
    specs = specs_for(tmp_path, GOOD)
    book, hours = specs.declared
    assert (book.method, book.timeout_s, book.side_effects, book.max_result_chars) == ("POST", 10, True, 2000)
    assert (hours.method, hours.timeout_s, hours.side_effects, hours.max_result_chars) == ("GET", 2.5, False, 100)
    assert book.headers["Authorization"].get_secret_value() == f"Bearer {SECRET}"
    assert SECRET not in repr(book)  # resolved, but never shown
    assert specs.secrets == [f"Bearer {SECRET}", "plain"]


def test_the_example_file_in_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config" / "tools.example.toml"
    specs = load_tool_specs(make_settings(tools_file=example), {})
    assert {d.name for d in specs.declared} == {"opening_hours", "book_table"}


BAD = [
    ("unknown key", 'name = "t"\ndescription = "d"\nparameters = {type = "object"}\nurl = "http://h/"\nurll = 1',
     "tool 't': key 'urll'"),
    ("missing url", 'name = "t"\ndescription = "d"\nparameters = {type = "object"}', "tool 't': key 'url'"),
    ("bad url", 'name = "t"\ndescription = "d"\nparameters = {type = "object"}\nurl = "ftp://h/"', "key 'url'"),
    ("bad name", 'name = "a b"\ndescription = "d"\nparameters = {type = "object"}\nurl = "http://h/"', "key 'name'"),
    ("builtin", 'name = "end_call"\ndescription = "d"\nparameters = {type = "object"}\nurl = "http://h/"',
     "key 'name': Value error, end_call is built in"),
    ("bad json", 'name = "t"\ndescription = "d"\nparameters = "{nope"\nurl = "http://h/"', "key 'parameters'"),
    ("not object", 'name = "t"\ndescription = "d"\nparameters = {type = "string"}\nurl = "http://h/"',
     "key 'parameters'"),
    ("bad schema", 'name = "t"\ndescription = "d"\nparameters = {type = "object", required = 3}\nurl = "http://h/"',
     "not a valid JSON Schema"),
    ("bad method", 'name = "t"\ndescription = "d"\nparameters = {type = "object"}\nurl = "http://h/"\nmethod = "PUT"',
     "key 'method'"),
    ("bad timeout", 'name = "t"\ndescription = "d"\nparameters = {type = "object"}\nurl = "http://h/"\ntimeout_s = 0',
     "key 'timeout_s'"),
    ("missing env", 'name = "t"\ndescription = "d"\nparameters = {type = "object"}\nurl = "http://h/"\n'
     'headers = { Authorization = "${NOT_SET_ANYWHERE}" }',
     "tool 't': key 'headers.Authorization': environment variable NOT_SET_ANYWHERE is not set"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "table", "error"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_tool_is_a_startup_error_naming_the_tool_and_the_key(
    tmp_path: Path, case: str, table: str, error: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        specs_for(tmp_path, "[[tool]]\n" + table + "\n")
    assert error in str(caught.value)
    assert str(tmp_path / "tools.toml") in str(caught.value)


def test_a_duplicate_name_and_bad_files_are_startup_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="tool 'book_table': key 'name': declared twice"):
        specs_for(tmp_path, GOOD + GOOD)
    with pytest.raises(SettingsError, match="not valid TOML"):
        specs_for(tmp_path, "[[tool]\n")
    with pytest.raises(SettingsError, match="unknown key 'tools'"):
        specs_for(tmp_path, "[[tools]]\nname = 'x'\n")
    with pytest.raises(SettingsError, match="cannot read"):
        load_tool_specs(make_settings(tools_file=tmp_path / "missing.toml"), {})


def test_the_server_refuses_to_start_with_a_bad_tools_file_and_shows_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tools.toml"
    path.write_text(GOOD.replace('say = "Booking it now."', "say = 3"))
    monkeypatch.setenv("VOICEBOT_TOOLS_FILE", str(path))
    monkeypatch.setenv("BOOKING_TOKEN", SECRET)
    monkeypatch.chdir(tmp_path)  # no config/voicebot.toml, no .env
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "tool 'book_table': key 'say'" in err
    assert SECRET not in err


TOOLS_MODULE = """
from voicebot.tools import tool

@tool(description="Opening hours.", side_effects=False, say="Checking.",
      parameters={"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]})
async def opening_hours(args, call):
    return {"day": args["day"], "hours": "9-18", "caller": call.caller}

@tool(name="ping", description="Ping.")
async def _ping(args, call):
    return "pong"

def helper():
    return 1
"""


def test_a_python_module_registers_its_marked_functions(tmp_path: Path) -> None:
    path = tmp_path / "my_tools.py"
    path.write_text(TOOLS_MODULE)
    specs = load_tool_specs(make_settings(tools_module=str(path)), {})
    by_name = {t.name: t for t in specs.python}
    assert set(by_name) == {"opening_hours", "ping"}
    hours = by_name["opening_hours"]
    assert (hours.side_effects, hours.say, hours.timeout_s) == (False, "Checking.", 10.0)
    assert by_name["ping"].side_effects  # the safe default: a barge-in never cancels it
    registry = ToolRegistry(specs.python)
    names = [s["function"]["name"] for s in registry.schemas()]
    assert names == ["end_call", "opening_hours", "ping"]  # offered exactly like declared tools
    assert hours.check_arguments({"day": "mon"}) is None
    assert hours.check_arguments({}) == "'day' is a required property"


PY_BAD = [
    ("no tools", "x = 1\n", "no function marked with @tool"),
    ("import fails", "import not_a_module_anywhere\n", "import failed: ModuleNotFoundError"),
    ("sync", "from voicebot.tools import tool\n@tool(description='d')\ndef f(a, c):\n    return 1\n",
     "tool 'f': must be an async function"),
    ("bad schema", "from voicebot.tools import tool\n@tool(description='d', parameters={'type': 'array'})\n"
     "async def f(a, c):\n    return 1\n", "tool 'f': key 'parameters'"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "source", "error"), PY_BAD, ids=[b[0] for b in PY_BAD])
def test_a_bad_python_tools_module_is_a_startup_error(tmp_path: Path, case: str, source: str, error: str) -> None:
    path = tmp_path / f"bad_{case.replace(' ', '_')}.py"
    path.write_text(source)
    with pytest.raises(SettingsError, match=error):
        load_tool_specs(make_settings(tools_module=str(path)), {})


def test_a_python_tool_clashing_with_a_declared_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tools.toml").write_text(GOOD)
    path = tmp_path / "clash.py"
    path.write_text(
        "from voicebot.tools import tool\n@tool(description='d')\nasync def book_table(a, c):\n    return 1\n"
    )
    settings = make_settings(tools_file=tmp_path / "tools.toml", tools_module=str(path))
    with pytest.raises(SettingsError, match="tool 'book_table': key 'name': also declared in the tools file"):
        load_tool_specs(settings, {"BOOKING_TOKEN": SECRET})


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    body = b'{"tool":"t","arguments":{}}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign("s3cret", body) == f"sha256={expected}"


def test_failure_lines_cannot_pass_for_answers() -> None:
    assert failure_line("timeout", "t", "no answer within 2 s") == "[error, no result] t: no answer within 2 s"
    assert failure_line("cancelled", "t", "x").startswith("[cancelled, no result]")
    assert failure_line("still_running", "t", "x").startswith("[still running, no result yet]")
    assert failure_line("refused", "t", "x").startswith("[not run]")
    assert truncate("abcdef", 100) == "abcdef"
    assert len(truncate("a" * 5000, 2000)) == 2000
    assert check_parameters_schema({"type": "object"}) is None
    assert ToolCall("1", "t", {}).arguments == {}


def test_check_config_lists_the_tools_and_an_empty_tools_file_means_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tools.toml"
    path.write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOOKING_TOKEN", SECRET)
    monkeypatch.setenv("VOICEBOT_TOOLS_FILE", str(path))
    assert main(["--check-config"]) == 0
    out = capsys.readouterr().out
    assert '"tools (loaded)": [\n    "book_table",\n    "opening_hours"\n  ]' in out
    assert SECRET not in out
    monkeypatch.setenv("VOICEBOT_TOOLS_FILE", "")
    assert main(["--check-config"]) == 0
    assert '"tools (loaded)": []' in capsys.readouterr().out
