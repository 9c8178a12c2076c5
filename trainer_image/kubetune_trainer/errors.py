"""Failure kinds of a trial, each tied to the exit code the operator maps to a reason.

Modules raise these with a message a user can act on (naming the field, file and line, or
URI); the CLI turns them into the exit code and the termination message.
"""

from __future__ import annotations

from kubetune.contract import EXIT_BAD_INPUT, EXIT_STORAGE_FAILED, EXIT_TRAINING_FAILED


class TrialError(Exception):
    """Base of the failures the trainer expects; `exit_code` is what the process returns."""

    exit_code: int = EXIT_TRAINING_FAILED


class InputError(TrialError):
    """The trial's input is wrong: config, data or base model. Retrying will not help."""

    exit_code = EXIT_BAD_INPUT


class TrainingError(TrialError):
    """Training failed at run time: a non-finite loss, out of memory."""

    exit_code = EXIT_TRAINING_FAILED


class StorageError(TrialError):
    """Reading or writing S3 or the output directory failed (possibly transient)."""

    exit_code = EXIT_STORAGE_FAILED
