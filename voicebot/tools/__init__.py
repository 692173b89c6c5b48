"""Custom tools: declared HTTP endpoints (the tools file) and Python functions, offered to the model.

A top-level package rather than part of the call: the registry is loaded once per process at startup (like the
settings) and knows nothing of turns or audio; the conversation imports it, never the other way round.
"""

from __future__ import annotations

from voicebot.tools.base import CONTROL_TOOLS, END_CALL, TRANSFER_CALL, Tool, ToolContext, ToolFailed, failure_line
from voicebot.tools.declared import SIGNATURE_HEADER, sign
from voicebot.tools.python import tool
from voicebot.tools.registry import ToolRegistry, ToolSpecs, load_tool_specs
from voicebot.tools.runner import ToolLimits, ToolOutcome, ToolRunner

__all__ = [
    "CONTROL_TOOLS",
    "END_CALL",
    "SIGNATURE_HEADER",
    "TRANSFER_CALL",
    "Tool",
    "ToolContext",
    "ToolFailed",
    "ToolLimits",
    "ToolOutcome",
    "ToolRegistry",
    "ToolRunner",
    "ToolSpecs",
    "failure_line",
    "load_tool_specs",
    "sign",
    "tool",
]
