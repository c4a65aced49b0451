"""The import graph flows one way: models and cache <- sampling <- pipeline <- cli, and the
memory package is layered (host, residency <- streamer <- models <- planner <- placement).

Imports are read with ``ast`` (every ``import`` statement, at module level or not), so a
lazy import inside a function counts as a dependency too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "framepack"

# module prefix -> module prefixes it must never import
FORBIDDEN = {
    "framepack.models": (
        "framepack.pipeline",
        "framepack.components",
        "framepack.cli",
        "framepack.sampling",
        "framepack.memory.planner",
        "framepack.memory.placement",
    ),
    "framepack.cache": (
        "framepack.pipeline",
        "framepack.components",
        "framepack.cli",
        "framepack.sampling",
        "framepack.config",
        "framepack.video",
    ),
    # the research path (generate_latents) needs no image, video or pipeline option
    "framepack.sampling": (
        "framepack.pipeline",
        "framepack.components",
        "framepack.cli",
        "framepack.config",
        "framepack.video",
        "framepack.results",
    ),
    "framepack.memory": ("framepack.pipeline", "framepack.components", "framepack.cli", "framepack.sampling"),
    # the low layer of memory, which models use: no model, planner or placement above it
    "framepack.memory.host": ("framepack.models", "framepack.memory.planner", "framepack.memory.placement"),
    "framepack.memory.mapped_pages": ("framepack.models", "framepack.memory.planner", "framepack.memory.placement"),
    "framepack.memory.residency": ("framepack.models", "framepack.memory.planner", "framepack.memory.placement"),
    "framepack.memory.streamer": ("framepack.models", "framepack.memory.planner", "framepack.memory.placement"),
    "framepack.memory.planner": ("framepack.memory.placement",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from x import y`` counts x and x.y)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_relative_imports_resolve_to_framepack_modules() -> None:
    names = {module_name(p) for p in SOURCES}
    assert "framepack.models.streaming" in names and "framepack.memory.streamer" in names
    assert "framepack.memory.streamer" in imports(PACKAGE / "models" / "streaming.py")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_import_against_the_flow(path: Path) -> None:
    name = module_name(path)
    bad = sorted(
        f"{imported} (forbidden for {prefix})"
        for prefix, forbidden in FORBIDDEN.items()
        if within(name, prefix)
        for imported in imports(path)
        if any(within(imported, f) for f in forbidden)
    )
    assert not bad, f"{name} imports against the dependency flow: {bad}"
