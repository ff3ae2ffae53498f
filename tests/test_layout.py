"""The package's layout as a specification: imports point down (design section 8),
the top level stays small, and modules stay a size a newcomer reads in one go.

Read from the source with ``ast``: no import of the package, so a new upward import
fails here, naming the module and what it imported, before review has to find it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "acexport"

# The flat vocabulary that settings and the lower layers use: each imports only others
# of it (and the package's __init__, for __version__).
VOCABULARY = frozenset(
    {
        "__init__",
        "__version__",  # from .. import __version__
        "errors",
        "events",
        "formats",
        "limits",
        "pathtemplate",
        "protocol",
        "retention",
        "tables",
        "triggers",
        "windows",
    }
)
# What runs exports (and observes them: ops/, hooks/), above one export and its parts.
ABOVE_EXPORT = frozenset(
    {
        "lane",
        "planner",
        "scheduler",
        "ops",
        "hooks",
        "daemon",
        "commands",
        "cli",
        "__main__",
        "emulator",
    }
)

# unit -> the units it may import besides the vocabulary. A unit is a top-level module
# or a subpackage. ``ops.logging`` is the one leaf of ops/ that lower layers use (it
# registers and filters secrets); it is allowed where named as "ops.logging".
ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset(),
    "ac": frozenset(),
    "ledger": frozenset(),
    "payload": frozenset(),
    "output": frozenset({"config", "payload", "ops.logging"}),
    "export": frozenset({"config", "ac", "output", "payload"}),
    "lock": frozenset(),
}
MAX_MODULE_LINES = 450

# Third-party imports a unit must never make: the byte pipeline knows no HTTP.
FORBIDDEN_LIBRARIES = {"payload": ("aiohttp", "yarl"), "ledger": ("aiohttp",)}
# Units a unit must never import, wherever it sits: hooks know no AC (design section 8).
FORBIDDEN_UNITS = {"hooks": ("ac", "export", "lane", "planner")}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield ".".join(path.relative_to(PACKAGE).with_suffix("").parts), path


def _unit(name: str) -> str:
    return name.split(".")[0]


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(module imported, relative to the package, or "lib:<name>"; line)."""
    package = name.split(".")[:-1]  # "ledger.rows" and "ledger.__init__" are in ledger
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = [*base, *(node.module.split(".") if node.module else [])]
            if node.module:
                yield ".".join(target) or "__init__", node.lineno
            else:
                for alias in node.names:
                    yield ".".join([*target, alias.name]), node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield f"lib:{node.module}", node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield f"lib:{alias.name}", node.lineno


def _allowed(unit: str, target: str) -> bool:
    target_unit = _unit(target)
    if target_unit == unit or target_unit in VOCABULARY:
        return True
    allowed = ALLOWED[unit]
    return target_unit in allowed or any(target.startswith(a + ".") or target == a for a in allowed)


def test_imports_point_down() -> None:
    wrong = []
    for name, path in _modules():
        unit = _unit(name)
        for target, line in _imports(name, path):
            where = f"{path.relative_to(PACKAGE)}:{line} imports {target}"
            if target.startswith("lib:"):
                library = target[4:].split(".")[0]
                if library in FORBIDDEN_LIBRARIES.get(unit, ()):
                    wrong.append(where)
            elif unit in VOCABULARY:
                if _unit(target) not in VOCABULARY:
                    wrong.append(where)
            elif unit in ALLOWED:
                if not _allowed(unit, target):
                    wrong.append(where)
            elif unit not in ABOVE_EXPORT and _unit(target) in ABOVE_EXPORT:
                wrong.append(where)
            if _unit(target) in FORBIDDEN_UNITS.get(unit, ()):
                wrong.append(where)
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def test_only_the_command_layer_knows_the_daemon_and_the_emulator() -> None:
    wrong = [
        f"{path.relative_to(PACKAGE)}:{line} imports {target}"
        for name, path in _modules()
        for target, line in _imports(name, path)
        if _unit(target) in {"daemon", "commands", "emulator", "cli"}
        and _unit(name) not in {"commands", "cli", "emulator", "__main__", _unit(target)}
    ]
    assert not wrong, "\n".join(wrong)


def test_the_top_level_holds_at_most_twenty_modules() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 20, top


def test_modules_stay_readable() -> None:
    """About 400 lines is one concept; past MAX_MODULE_LINES it is probably two."""
    long = {
        str(path.relative_to(PACKAGE)): n
        for _, path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long


MAX_FUNCTION_LINES = 50
# Declaration tables: argparse's flags, the metrics' definitions, the emulator's columns
# per type. Long by what they declare, not by what they do.
DECLARATIONS = {
    ("cli.py", "build_parser"),
    ("emulator/cli.py", "_add_processing_arguments"),
    ("emulator/data.py", "_fragment"),
    ("ops/metrics.py", "__init__"),
}


def test_functions_stay_short() -> None:
    long = []
    for _, path in _modules():
        where = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES and (where, node.name) not in DECLARATIONS:
                    long.append(f"{where}: {node.name} ({length} lines)")
    assert not long, long
