"""What every command shares: the user-error convention and the flag set-up.

A command's body runs under ``run_command``: a ``UserError`` (bad input: a file, a case, a
config value) prints ``error: <message>`` on stderr and gives exit status 1 (training stopped by
a signal after saving prints ``stopped: <message>`` and gives 75); anything else is a bug and
keeps its traceback. ``absl_flags_parser`` does the same for the main job's absl flags
(config file, variant and ``--config.a.b=value`` overrides), whose errors absl would otherwise
print with a traceback.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from lesionjax.core.errors import UserError


def print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def run_command(body: Callable[[], int | None]) -> int:
    """Runs a command's body; a UserError becomes one ``error:`` line and exit status 1 (a
    ``StopRequested``: one ``stopped:`` line and status 75)."""
    try:
        return int(body() or 0)
    except UserError as err:
        print(f"{err.prefix}: {err}", file=sys.stderr, flush=True)
        return err.exit_status


def add_cavity_mask_option(parser, help: str) -> None:
    """``--cavity-mask [RUN]``: alone "dataset" (the cases' own cavity masks), or a cavity run
    folder (``configs/cavity.py``) whose models predict the cavity."""
    parser.add_argument(
        "--cavity-mask", nargs="?", const="dataset", default=None, metavar="RUN", help=help
    )


def mark_absl_parsed() -> None:
    """grain reads absl flags; commands that parse their own arguments mark them parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def prepare_command() -> None:
    """What a command that parses its own arguments does before any work: absl flags marked
    parsed (grain reads them) and absl logging at WARNING (Orbax logs every restore at INFO)."""
    mark_absl_parsed()
    from absl import logging

    logging.set_verbosity(logging.WARNING)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def config_spec(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return "the config"


def _flag_error(argv: Sequence[str], err: BaseException) -> str:
    """One line saying which flag or config file failed, and why."""
    spec = config_spec(argv)
    text = str(err)
    if isinstance(err, AttributeError | KeyError):  # an override naming no config key
        key = _last_line(text).strip("'\" ").split("'")[0]
        given = [a for a in argv if re.match(rf"--config\.(\w+\.)*{re.escape(key)}(=|$)", a)]
        where = given[0] if given else "--config override"
        return f"{where}: {spec} has no config key {key!r}"
    message = _last_line(text.split("Error whilst parsing config file:")[-1])
    if "Error whilst parsing config file" in text:
        message = re.sub(r"^[\w.]+(Error|Exception): ", "", message)
        return f"{spec}: {message}"
    return re.sub(r"^flag ", "", message)


def config_flag_value(holder, argv: Sequence[str]):
    """The config of a ``config_flags.DEFINE_config_file`` flag. ml_collections reports a file
    that cannot be loaded only when the value is read; that becomes a ConfigError naming it."""
    from lesionjax.core.errors import ConfigError

    try:
        value = holder.value
        value.keys()  # a config that failed to load raises here, not above
        return value
    except OSError as err:
        reason = _last_line(str(err))
        raise ConfigError(f"{config_spec(argv)}: cannot load the config file ({reason})") from None


def absl_flags_parser(argv: Sequence[str]):
    """``app.run(main, flags_parser=absl_flags_parser)``: absl's parsing, errors as one line."""
    from absl import flags

    try:
        return flags.FLAGS(list(argv))
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        print_error(_flag_error(argv, err))
        sys.exit(2)
