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


class InvalidModelReference(ModelRefused):
    """The model's name or path is unacceptable in itself, whatever is on disk: both or neither
    given, a name that is not a folder name, a relative path, a path outside the allowed roots.
    The caller has to change the reference; any other refusal is about the folder it names."""


class ModelLoadFailed(ModelingError):
    """The folder passed the safety checks but could not be loaded (corrupt or missing files,
    an architecture with no model class for the task, files changed since they were hashed)."""


class DataUnavailable(ModelingError):
    """A split manifest or canonical dataset that is missing, corrupt or inconsistent."""
