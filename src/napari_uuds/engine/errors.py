"""The one exception type the engine raises for problems a user can act on.

The CLI turns it into a one-line message and exit code 2; the GUI into a notification.
"""
from __future__ import annotations

from pathlib import Path


class UUDSError(Exception):
    """A user-facing error: one line naming the file (if any) and the problem."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
