"""Tools written in Python: a module of async functions marked with :func:`tool`.

```python
from voicebot.tools import ToolContext, ToolFailed, tool

@tool(description="Opening hours for a day.", side_effects=False,
      parameters={"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]})
async def opening_hours(args: dict, call: ToolContext) -> str:
    return "9:00-18:00"
```

The setting ``VOICEBOT_TOOLS_MODULE`` names the module (``package.module``, or a path ending in ``.py``); every
function in it marked with ``@tool`` is offered to the model like a declared tool. No global registry: the
loader reads the marks off the module's functions.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from voicebot.tools.base import (
    CONTROL_TOOLS,
    DEFAULT_MAX_RESULT_CHARS,
    DEFAULT_TIMEOUT_S,
    NAME_RE,
    Handler,
    Tool,
    check_parameters_schema,
)

_MARK = "__voicebot_tool__"
EMPTY_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}


class ToolModuleError(ValueError):
    """The tools module cannot be imported or declares a bad tool; the message names the tool and the key."""


@dataclass(frozen=True)
class _Options:
    name: str | None
    description: str
    parameters: Mapping[str, Any]
    side_effects: bool
    say: str | None
    timeout_s: float
    max_result_chars: int


def tool(
    *,
    description: str,
    parameters: Mapping[str, Any] | None = None,
    name: str | None = None,
    side_effects: bool = True,
    say: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
) -> Callable[[Handler], Handler]:
    """Mark an ``async def f(args, call)`` as a tool (the same keys as a declared tool, minus the HTTP ones)."""
    options = _Options(
        name, description, parameters or EMPTY_PARAMETERS, side_effects, say, timeout_s, max_result_chars
    )

    def mark(function: Handler) -> Handler:
        setattr(function, _MARK, options)
        return function

    return mark


def load_module(spec: str) -> list[Tool]:
    """The tools of the module ``spec`` (dotted name, or a ``.py`` path); raises ToolModuleError."""
    module = _import(spec)
    tools = []
    for attribute, value in vars(module).items():
        options = getattr(value, _MARK, None)
        if isinstance(options, _Options):
            tools.append(_build(spec, attribute, value, options))
    if not tools:
        raise ToolModuleError(f"tools module {spec}: no function marked with @tool")
    return tools


def _import(spec: str) -> ModuleType:
    try:
        if spec.endswith(".py"):
            path = Path(spec)
            module_spec = importlib.util.spec_from_file_location(f"voicebot_tools_{path.stem}", path)
            if module_spec is None or module_spec.loader is None or not path.is_file():
                raise ToolModuleError(f"tools module {spec}: no such file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except ToolModuleError:
        raise
    except Exception as exc:  # a deployer's module failing to import: report it, as a startup error
        raise ToolModuleError(f"tools module {spec}: import failed: {type(exc).__name__}: {exc}") from exc


def _build(spec: str, attribute: str, function: Any, options: _Options) -> Tool:
    name = options.name or attribute
    where = f"tools module {spec}: tool {name!r}"
    if not NAME_RE.match(name):
        raise ToolModuleError(f"{where}: key 'name': must be 1-64 letters, digits, '_' or '-'")
    if name in CONTROL_TOOLS:
        raise ToolModuleError(f"{where}: key 'name': {name} is built in")
    if not options.description.strip():
        raise ToolModuleError(f"{where}: key 'description': must not be empty")
    problem = check_parameters_schema(options.parameters)
    if problem is not None:
        raise ToolModuleError(f"{where}: key 'parameters': {problem}")
    if not options.timeout_s > 0:
        raise ToolModuleError(f"{where}: key 'timeout_s': must be greater than 0")
    if options.max_result_chars < 1:
        raise ToolModuleError(f"{where}: key 'max_result_chars': must be at least 1")
    if not inspect.iscoroutinefunction(function):
        raise ToolModuleError(f"{where}: must be an async function (async def {attribute}(args, call))")
    return Tool(
        name=name,
        description=options.description,
        parameters=options.parameters,
        handler=function,
        side_effects=options.side_effects,
        say=options.say,
        timeout_s=options.timeout_s,
        max_result_chars=options.max_result_chars,
    )
