"""The suite reads nothing a clone of the repository lacks (see conftest.py)."""

from __future__ import annotations

import pytest
from conftest import REPOSITORY, OutsideRepositoryRead


@pytest.mark.parametrize("relative", ["shared/DESIGN.md", "shared/reference/no-such-sheet.md", "shared"])
def test_opening_the_shared_folder_beside_the_clone_fails_the_test(relative: str) -> None:
    with pytest.raises(OutsideRepositoryRead, match="a clone of the repository does not have"):
        open(REPOSITORY.parent / relative, "rb").close()


def test_files_inside_the_repository_open_as_usual() -> None:
    with open(REPOSITORY / "pyproject.toml", "rb") as f:
        assert f.read(1)
