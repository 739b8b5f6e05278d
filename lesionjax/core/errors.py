"""The user-error convention shared by every command.

A ``UserError`` is a problem with the user's input (a file, a case, a config value), not a bug:
the command prints ``error: <file or case>: <problem and what to do>`` on stderr, without a
traceback, and exits non-zero. Subclasses say which stage found the problem; the message always
starts with what it is about (a path, a case id or a config key).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; ``str(err)`` is the whole message after ``error: ``.

    ``prefix`` and ``exit_status`` are what the command prints before the message and the
    status it exits with (subclasses that are not errors change them).
    """

    prefix = "error"
    exit_status = 1


class ConfigError(UserError, ValueError):
    """A config value is impossible or unsupported (the message names the key)."""


# sysexits.h's EX_TEMPFAIL: "try again later". Launchers requeue a job that exits with it.
EXIT_STOPPED = 75


class StopRequested(UserError):
    """Training stopped on a signal (a preemption, Ctrl-C) after saving a checkpoint; running
    the same command again resumes there. Not an error: printed as ``stopped: ...``, exit 75."""

    prefix = "stopped"
    exit_status = EXIT_STOPPED
