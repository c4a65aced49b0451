"""The exceptions framepack raises: one base class, a few kinds a caller can act on."""

from __future__ import annotations


class FramePackError(Exception):
    """Base of every error framepack raises on purpose."""


class CheckpointError(FramePackError):
    """A checkpoint cannot be found, read, or does not match the model it is loaded into."""


class ConfigError(FramePackError, ValueError):
    """A configuration (model config.json or generation settings) is invalid."""


class InputError(FramePackError, ValueError):
    """An input tensor, image or file has the wrong shape, type or content."""


class NumericalError(FramePackError, ArithmeticError):
    """A computation produced inf or NaN (typically a float16 overflow)."""
