"""The suite reads nothing a clone of the repository lacks (see conftest.py)."""

from __future__ import annotations

import pytest
from conftest import _GUARD_PARENT, REPOSITORY, OutsideRepositoryRead


@pytest.mark.skipif(
    not _GUARD_PARENT, reason="a clone at the top of /, ~ or the temporary folder has no beside to guard"
)
@pytest.mark.parametrize("relative", ["notes/DESIGN.md", "notes/reference/no-such-sheet.md", "notes"])
def test_opening_a_folder_beside_the_clone_fails_the_test(relative: str) -> None:
    with pytest.raises(OutsideRepositoryRead, match="a clone of the repository does not have"):
        open(REPOSITORY.parent / relative, "rb").close()


def test_files_inside_the_repository_open_as_usual() -> None:
    with open(REPOSITORY / "pyproject.toml", "rb") as f:
        assert f.read(1)
