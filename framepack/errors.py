"""The exceptions framepack raises: one base class, a few kinds a caller can act on."""

from __future__ import annotations

from typing import Any


class FramePackError(Exception):
    """Base of every error framepack raises on purpose."""


class CheckpointError(FramePackError):
    """A checkpoint cannot be found, read, or does not match the model it is loaded into."""


class ConfigError(FramePackError, ValueError):
    """A configuration (model config.json or generation settings) is invalid."""


class InputError(FramePackError, ValueError):
    """An input tensor, image or file has the wrong shape, type or content."""


class OutputExistsError(InputError):
    """An output that must be new found a file at its path (maybe one that appeared while it was
    being written); that file is left as it was."""


class OutputError(FramePackError):
    """An output file (a preview mp4, the video) could not be written; the cause is chained."""


class NumericalError(FramePackError, ArithmeticError):
    """A computation produced inf or NaN (typically a float16 overflow).

    Raised by a generation, ``partial`` keeps the latents of every finished section, as
    ``GenerationInterrupted.partial`` does; None when none had finished, or outside a generation.
    """

    def __init__(self, message: str = "non-finite values", partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


class GenerationInterrupted(FramePackError):
    """A generation stopped before its end; ``partial`` keeps the latents of every finished section.

    ``partial`` is a [B, 16, T, h, w] tensor in temporal order, or None when no section had finished.
    """

    def __init__(self, message: str = "generation interrupted", partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial


class GenerationCancelled(GenerationInterrupted):
    """A progress callback asked to stop; raise it from the callback to cancel a generation."""

    def __init__(self, message: str = "generation cancelled", partial: Any = None) -> None:
        super().__init__(message, partial)
