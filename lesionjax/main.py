"""The main job: ``python -m lesionjax.main --config configs/<experiment>.py [--workdir DIR]``
(also ``lesionjax-train``).

Override any config value with ``--config.a.b=value``; pick a variant with
``--config configs/file.py:variant``.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from lesionjax.cli import absl_flags_parser, config_flag_value, run_command

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config name>).")


def main(argv) -> int:
    del argv
    if not flags.FLAGS["verbosity"].present:
        # Orbax and grain log every save at INFO; keep the console to the progress bar.
        logging.set_verbosity(logging.WARNING)

    several = False

    def body() -> int:
        nonlocal several
        from lesionjax.distributed import initialize_from_env, peer_lost

        several = initialize_from_env()  # before any JAX computation
        import jax

        from lesionjax.tasks import format_result, run_task

        config = config_flag_value(_CONFIG, sys.argv)
        workdir = Path(_WORKDIR.value or Path("runs") / config.get("name", "run"))
        try:
            summary = run_task(config, workdir)
        except Exception as err:
            lost = peer_lost(err)
            if lost is None:
                raise
            raise lost from None
        if jax.process_index() == 0:
            print(format_result(summary))
            print(f"report: {summary['report']}")
            print(f"summary: {summary.get('summary_path', workdir / 'eval' / 'summary.json')}")
        return 0

    try:
        status = run_command(body)
    except Exception:
        if not several:
            raise
        traceback.print_exc()
        status = 1
    if several and status != 0:
        # JAX's exit handler waits at a shutdown barrier for every process; a process that
        # died (or one that stopped alone) would keep this one there for minutes, then abort.
        # Every checkpoint is committed or not there at all, so nothing is lost by leaving now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def cli() -> None:
    """The ``lesionjax-train`` entry point."""
    flags.mark_flag_as_required("config")
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=absl_flags_parser)


if __name__ == "__main__":
    cli()
