"""Multi-process initialization from the environment (must run before any JAX computation)."""

from __future__ import annotations

import os


def initialize_from_env() -> bool:
    """Calls ``jax.distributed.initialize`` when the environment describes a multi-process job.

    Explicit: ``LESIONJAX_COORDINATOR=host:port``, ``LESIONJAX_NUM_PROCESSES``,
    ``LESIONJAX_PROCESS_ID`` (local multi-process and any launcher). Automatic: SLURM
    (``SLURM_NTASKS`` > 1) and Cloud TPU pods, where JAX discovers the rest itself. Returns True
    when JAX was initialized for several processes.
    """
    import jax

    coordinator = os.environ.get("LESIONJAX_COORDINATOR")
    if coordinator:
        jax.distributed.initialize(
            coordinator,
            num_processes=int(os.environ["LESIONJAX_NUM_PROCESSES"]),
            process_id=int(os.environ["LESIONJAX_PROCESS_ID"]),
        )
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES"):
        jax.distributed.initialize()
        return True
    return False
