"""Errors about studies and their database (bad input: the CLI prints one line, exit 2)."""

from __future__ import annotations


class StudyError(ValueError):
    """Bad input about a study: unknown name, mismatched task or space on resume,
    unreachable or incompatible storage, a trial that is not complete, ...

    ``cli_text``: the same message worded for the command line (options, not the
    Python API's arguments); the CLI prints it instead."""

    def __init__(self, message: str = "", *, cli_text: str | None = None) -> None:
        super().__init__(message)
        if cli_text is not None:
            self.cli_text = cli_text


class SchemaVersionError(StudyError):
    """The database was written by a newer slimtune schema; it is refused, never altered."""


class NoCandidateError(StudyError):
    """No complete trial satisfies the requested constraints."""
