"""The user-error convention shared by every command.

A ``UserError`` is a problem with the user's input (a file, a case, a config value), not a bug:
the command prints ``error: <file or case>: <problem and what to do>`` on stderr, without a
traceback, and exits non-zero. Subclasses say which stage found the problem; the message always
starts with what it is about (a path, a case id or a config key).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; ``str(err)`` is the whole message after ``error: ``."""


class ConfigError(UserError, ValueError):
    """A config value is impossible or unsupported (the message names the key)."""
