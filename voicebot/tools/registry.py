"""The tools of one process: the built-in call controls plus those declared in the tools file or written in
Python, loaded and checked once at startup (a bad file or module is a startup error naming the tool and key)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from voicebot.settings import Settings, SettingsError
from voicebot.tools.base import END_CALL, TRANSFER_CALL, Tool, function_schema
from voicebot.tools.declared import DeclaredTool, HttpTool, ToolsFileError, load_tools_file
from voicebot.tools.python import ToolModuleError, load_module

END_CALL_SCHEMA = function_schema(
    END_CALL,
    "End the phone call, after the caller says goodbye or clearly wants to hang up.",
    {
        "type": "object",
        "properties": {"reason": {"type": "string", "description": "Why the call is ending."}},
        "required": [],
    },
)
TRANSFER_SCHEMA = function_schema(
    TRANSFER_CALL,
    "Transfer the caller to a human colleague when they ask for one or you cannot help.",
    {"type": "object", "properties": {}, "required": []},
)


@dataclass(frozen=True)
class ToolSpecs:
    """Everything the settings declare, checked, before any client exists (``--check-config`` and startup)."""

    declared: Sequence[DeclaredTool]
    python: Sequence[Tool]

    @property
    def names(self) -> list[str]:
        return [*(d.name for d in self.declared), *(t.name for t in self.python)]

    @property
    def secrets(self) -> list[str]:
        """Header values resolved from the environment: for the log redactor, never for display."""
        values = (v.get_secret_value() for d in self.declared for v in d.headers.values())
        return [v for v in values if len(v) >= 4]


def load_tool_specs(settings: Settings, environ: Mapping[str, str] | None = None) -> ToolSpecs:
    """Read the tools file and import the tools module; raises SettingsError naming the tool and the key."""
    environ = os.environ if environ is None else environ
    try:
        declared = load_tools_file(settings.tools_file, environ) if settings.tools_file is not None else []
        python = load_module(settings.tools_module) if settings.tools_module else []
    except (ToolsFileError, ToolModuleError) as exc:
        raise SettingsError(str(exc)) from None
    names = [d.name for d in declared]
    for tool in python:
        if tool.name in names:
            raise SettingsError(
                f"tools module {settings.tools_module}: tool {tool.name!r}: key 'name': also declared in the tools file"
            )
        names.append(tool.name)
    return ToolSpecs(declared, python)


class ToolRegistry:
    """The tools offered to the model, by name."""

    def __init__(self, tools: Iterable[Tool] = (), *, transfer: bool = False) -> None:
        self._tools = {t.name: t for t in tools}
        self._control = [END_CALL_SCHEMA] + ([TRANSFER_SCHEMA] if transfer else [])

    @classmethod
    def build(cls, specs: ToolSpecs, settings: Settings, session: aiohttp.ClientSession | None) -> ToolRegistry:
        """The registry for a running server (declared tools need the shared HTTP session)."""
        tools = list(specs.python)
        if specs.declared:
            assert session is not None
            tools += [HttpTool(d, session, settings.tools_secret).tool() for d in specs.declared]
        return cls(tools, transfer=bool(settings.transfer_number))

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """The ``tools`` list of every chat completions request."""
        return [*self._control, *(t.schema() for t in self._tools.values())]

    def phrases(self) -> list[str]:
        """The tools' own filler phrases, for the phrase cache."""
        return [t.say for t in self._tools.values() if t.say]
