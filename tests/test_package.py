"""The package surface: every public name resolves, and importing framepack is cheap."""

from __future__ import annotations

import subprocess
import sys

import framepack


def test_every_public_name_resolves() -> None:
    for name in framepack.__all__:
        assert getattr(framepack, name) is not None, name


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
