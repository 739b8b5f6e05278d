"""The main job: ``python -m lesionjax.main --config configs/<experiment>.py [--workdir DIR]``.

Override any config value with ``--config.a.b=value``; pick a variant with
``--config configs/file.py:variant``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config name>).")


def main(argv) -> int:
    del argv
    if not flags.FLAGS["verbosity"].present:
        # Orbax and grain log every save at INFO; keep the console to the progress bar.
        logging.set_verbosity(logging.WARNING)
    from lesionjax.distributed import initialize_from_env

    initialize_from_env()  # before any JAX computation

    import jax

    from lesionjax.data.prepare import DataNotFoundError
    from lesionjax.train.tasks import format_result, run_task
    from lesionjax.train.trainer import NonFiniteLossError

    config = _CONFIG.value
    workdir = Path(_WORKDIR.value or Path("runs") / config.get("name", "run"))
    try:
        summary = run_task(config, workdir)
    except (DataNotFoundError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:
        print(format_result(summary))
        print(f"report: {summary['report']}")
        print(f"summary: {workdir / 'eval' / 'summary.json'}")
    return 0


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(lambda argv: sys.exit(main(argv)))
