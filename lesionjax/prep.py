"""``lesionjax-prep``: ``python -m data_prep.build_shards`` with the one option that needs trained
models, ``--cavity-model RUN`` (the cavity mask of every case that has none, from the cavity
models of RUN, ``configs/cavity.py``). Everything else is the shard builder's own.

    python -m lesionjax.prep --dataset NAME --src DIR --out DIR [--cavity-model RUN] [...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from data_prep.build_shards import main as build_main
    from lesionjax.cli import prepare_command, run_command
    from lesionjax.tasks.cavity_mask import fill_cavity_masks

    prepare_command()
    return run_command(lambda: build_main(argv, cavity_masks=fill_cavity_masks))


def cli() -> None:
    """The console-script entry point (see pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
