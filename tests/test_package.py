"""The package surface: the stated public names, each resolving; the subpackages' own
names; every framepack import the README and the examples make; importing framepack is cheap."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import framepack

REPOSITORY = Path(__file__).resolve().parents[1]

# What a user needs: the pipeline, settings, prompt schedules, results, progress, errors, the section loop
# and its inputs, the cache policies, the checkpoint repos. The rest lives in subpackages.
PUBLIC = {
    "FramePackPipeline", "GenerationConfig", "PromptSchedule", "SamplingSettings",
    "VideoResult", "SectionOutput", "Progress",
    "FramePackError", "CheckpointError", "ConfigError", "InputError", "NumericalError", "OutputError",
    "GenerationCancelled", "GenerationInterrupted",
    "generate_latents", "stream_latents", "Conditioning", "PackedContext",
    "NoCache", "TeaCache", "MagCache", "FirstBlockCache",
    "I2V_REPO", "F1_REPO", "HUNYUAN_REPO", "REDUX_REPO",
}  # fmt: skip
SUBPACKAGES = ["framepack.models", "framepack.sampling", "framepack.cache", "framepack.memory", "framepack.video"]


def test_the_top_level_exports_the_stated_names() -> None:
    assert sorted(framepack.__all__) == sorted(PUBLIC)
    for name in framepack.__all__:
        assert getattr(framepack, name) is not None, name


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_every_subpackage_exports_its_own_names(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, package
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"


def framepack_imports(code: str) -> list[ast.stmt]:
    """The ``import framepack...`` / ``from framepack... import`` statements in ``code``."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "framepack") or (
            isinstance(node, ast.Import) and any(a.name.split(".")[0] == "framepack" for a in node.names)
        ):
            found.append(node)
    return found


def readme_and_example_imports() -> list[tuple[str, str]]:
    readme = (REPOSITORY / "README.md").read_text()
    sources = {"README.md": "\n".join(re.findall(r"```python\n(.*?)```", readme, flags=re.S))}
    for path in sorted((REPOSITORY / "examples").glob("*.py")):
        sources[f"examples/{path.name}"] = path.read_text()
    return [(where, ast.unparse(node)) for where, code in sources.items() for node in framepack_imports(code)]


@pytest.mark.parametrize(("where", "statement"), readme_and_example_imports())
def test_the_readme_and_the_examples_import_what_exists(where: str, statement: str) -> None:
    exec(statement, {})


def test_the_readme_names_only_what_the_package_has() -> None:
    # Inline mentions such as `framepack.models.decode_preview` or `framepack.GenerationCancelled`.
    readme = (REPOSITORY / "README.md").read_text()
    for dotted in sorted(set(re.findall(r"`(framepack(?:\.\w+)+)", readme))):
        parts = dotted.split(".")
        for split in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:split]))
            except ModuleNotFoundError:
                continue
            for attribute in parts[split:]:
                obj = getattr(obj, attribute)
            break


def test_import_loads_no_torch() -> None:
    code = "import sys, framepack; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_library_never_imports_the_reference_libraries() -> None:
    code = (
        "import sys, framepack\n"
        "for name in framepack.__all__: getattr(framepack, name)\n"
        "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
