"""Errors about studies and their database (bad input: the CLI prints one line, exit 2)."""

from __future__ import annotations


class StudyError(ValueError):
    """Bad input about a study: unknown name, mismatched task or space on resume,
    unreachable or incompatible storage, a trial that is not complete, ..."""


class SchemaVersionError(StudyError):
    """The database was written by a newer slimtune schema; it is refused, never altered."""


class NoCandidateError(StudyError):
    """No complete trial satisfies the requested constraints."""
