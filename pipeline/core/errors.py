"""One hierarchy of errors; each carries the exit code the command line returns for it."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def described(exc: BaseException) -> str:
    """An error in one line: its type's name and the first line of its message ('ValueError: bad shape')."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    exit_code = 1


class BadInputError(PipelineError):
    """The user gave something unusable: a recipe, a model, an argument (exit 2)."""

    exit_code = 2


class RecipeError(BadInputError):
    """The recipe does not parse or does not validate."""


class ModelError(BadInputError):
    """The model named by the recipe cannot be loaded."""


class PassError(PipelineError):
    """A pass failed while running (exit 3); the message names the pass and its input."""

    exit_code = 3


class ParityError(PipelineError):
    """No artifact the recipe may ship passed its parity gate (exit 1)."""

    exit_code = 1


class ArtifactError(PipelineError):
    """An artifact on disk is missing, incomplete or does not match its manifest."""

    exit_code = 3


class DeviceError(PipelineError):
    """The runtime did not get the device or execution provider it asked for."""

    exit_code = 3


class DiskFullError(PipelineError):
    """A disk filled: exit 2 when it is the output folder's disk, 3 when another (a scratch folder)."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM); unwinds and cleans up as Ctrl-C does."""
