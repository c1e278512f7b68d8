"""Errors a user can fix: the CLI prints them as one line and exits with code 2; the Python API
raises them as they are (a `ValueError`, so `except ValueError` catches them too)."""

from __future__ import annotations

__all__ = ["UsageError", "InputError"]


class UsageError(ValueError):
    """Bad option or argument; the message names it and says what was expected."""


class InputError(UsageError):
    """Unreadable or inconsistent input file or dataset; the message names the file."""
