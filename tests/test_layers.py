"""The package's import graph: no cycles, and layers that only point down (see voicebot/__init__.py).

Every import counts, wherever it is written: at the top, inside a function, or under ``TYPE_CHECKING``. A cycle
hidden in a function is still a cycle in the design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "voicebot"
PLUMBING = {"voicebot.settings", "voicebot.logs", "voicebot.metrics", "voicebot.errors", "voicebot.audio"}
PLUMBING |= {"voicebot.access", "voicebot.clips"}
SHELL = {"voicebot.server", "voicebot.serve", "voicebot.__main__"}
TOOLS = ("voicebot.devpage", "voicebot.emulators", "voicebot.caller")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Each voicebot module and the voicebot modules it imports (a submodule when one is named)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, path.name == "__init__.py", node)
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.add(sub if sub in files else source)
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import that points up or sideways, as ``importer -> imported (rule)``."""
    found = []
    for module, targets in graph.items():
        for target in targets:
            rule = None
            if module in PLUMBING and target not in PLUMBING:
                rule = "plumbing imports only plumbing"
            elif _in(module, "voicebot.twilio", "voicebot.call", "voicebot.providers") and _in(target, *TOOLS):
                rule = "the edge, the call and the providers never import the dev page, emulators or caller"
            elif _in(module, "voicebot.providers") and _in(target, "voicebot.call", "voicebot.twilio"):
                rule = "providers never import the call or the edge"
            elif _in(module, "voicebot.tools") and _in(target, "voicebot.call", "voicebot.twilio", *TOOLS):
                rule = "tools never import the call, the edge or the offline tools"
            elif _in(module, "voicebot.twilio") and _in(target, "voicebot.call"):
                rule = "the edge never imports the call"
            elif target in SHELL and module not in SHELL:
                rule = "only the serving shell imports the server"
            elif _in(module, "voicebot.emulators") and _in(target, "voicebot.call", "voicebot.devpage"):
                rule = "the emulators stand alone (plumbing and the Twilio wire codec only)"
            if rule:
                found.append(f"{module} -> {target} ({rule})")
    return sorted(found)


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "voicebot.call.session" in graph and "voicebot.twilio.wire" in graph  # the walk found the package
    assert find_cycle(graph) is None


def test_layers_only_point_down() -> None:
    assert layer_violations(import_graph()) == []


def test_every_subpackage_says_what_it_may_import() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init} needs a docstring saying what lives there"


# --- the checks themselves can fail ---------------------------------------------------------------------------


def test_cycle_detector_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "voicebot"
    (pkg / "call").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "call" / "__init__.py").write_text("")
    (pkg / "server.py").write_text("from voicebot.call.session import CallSession\n")
    (pkg / "call" / "session.py").write_text("def f():\n    from voicebot.server import STATE\n")
    graph = import_graph(pkg)
    assert graph["voicebot.call.session"] == {"voicebot.server"}
    assert find_cycle(graph) == ["voicebot.call.session", "voicebot.server", "voicebot.call.session"]


@pytest.mark.parametrize(
    ("edge", "rule"),
    [
        (("voicebot.call.session", "voicebot.devpage.page"), "never import the dev page"),
        (("voicebot.providers.deepgram_stt", "voicebot.call.turns"), "providers never import"),
        (("voicebot.twilio.wire", "voicebot.caller.client"), "never import the dev page"),
        (("voicebot.logs", "voicebot.twilio.security"), "plumbing imports only plumbing"),
        (("voicebot.devpage.page", "voicebot.server"), "only the serving shell"),
        (("voicebot.tools.runner", "voicebot.call.bot_turn"), "tools never import the call"),
    ],
)
def test_layer_check_reports_an_upward_import(edge: tuple[str, str], rule: str) -> None:
    (violation,) = layer_violations({edge[0]: {edge[1]}})
    assert rule in violation


def test_relative_imports_resolve_to_the_named_module(tmp_path: Path) -> None:
    pkg = tmp_path / "voicebot"
    (pkg / "emulators").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "emulators" / "__init__.py").write_text("from .app import Emulators\n")
    (pkg / "emulators" / "app.py").write_text("from . import log\nfrom ..audio import FRAME_BYTES\n")
    (pkg / "emulators" / "log.py").write_text("")
    (pkg / "audio.py").write_text("")
    graph = import_graph(pkg)
    assert graph["voicebot.emulators"] == {"voicebot.emulators.app"}
    assert graph["voicebot.emulators.app"] == {"voicebot.emulators.log", "voicebot.audio"}
