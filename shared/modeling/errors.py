"""Why a base model, an adapter or a split could not be used.

Plain exceptions with no transport attached: the trainer turns them into field violations at
``CreateTrainingJob`` and into failure reasons at run time; the evaluator into its own verdicts.
"""

from __future__ import annotations


class ModelingError(Exception):
    """Base of every error :mod:`shared.modeling` raises on purpose."""


class ModelNotFound(ModelingError):
    """No model folder under that name or path."""


class ModelRefused(ModelingError):
    """A model folder that will not be loaded: pickle weights, remote code, a path outside the
    allowed roots, a symlink escaping them. ``files`` names the offending files, if any."""

    def __init__(self, message: str, files: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.files = files


class ModelLoadFailed(ModelingError):
    """The folder passed the safety checks but could not be loaded (corrupt or missing files,
    an architecture with no model class for the task, files changed since they were hashed)."""


class DataUnavailable(ModelingError):
    """A split manifest or canonical dataset that is missing, corrupt or inconsistent."""
