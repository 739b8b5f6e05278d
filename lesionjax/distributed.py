"""Multi-process set-up from the environment, and agreeing on an error across processes.

``initialize_from_env`` must run before any JAX computation. ``agree_on_error`` lets work done
on process 0 alone (building shards) fail on every process at once, instead of leaving the
others waiting at a barrier.
"""

from __future__ import annotations

import os

import numpy as np

from lesionjax.core.errors import UserError

# The longest error message carried to the other processes (bytes of UTF-8).
MAX_ERROR_BYTES = 4096


class DistributedSetupError(UserError):
    """The environment asks for several processes but they cannot meet."""


def _slurm_tasks() -> int:
    try:
        return int(os.environ.get("SLURM_NTASKS", "1"))
    except ValueError:
        raise DistributedSetupError(
            f"SLURM_NTASKS={os.environ['SLURM_NTASKS']!r} is not a number"
        ) from None


def check_slurm_step() -> None:
    """With SLURM_NTASKS > 1, this process must be one of the tasks of an ``srun`` step.

    A batch script that runs ``python ...`` directly inherits SLURM_NTASKS from ``sbatch`` but
    starts one process: JAX would wait for the others (``initialization_timeout``, 5 minutes by
    default) before failing. srun sets SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST and
    SLURM_PROCID for each task of its step.
    """
    n = _slurm_tasks()
    if n <= 1:
        return
    step_tasks = os.environ.get("SLURM_STEP_NUM_TASKS")
    missing = [v for v in ("SLURM_STEP_NODELIST", "SLURM_PROCID") if v not in os.environ]
    if missing or step_tasks != str(n):
        found = f"SLURM_STEP_NUM_TASKS={step_tasks}" if step_tasks else "no SLURM_STEP_NUM_TASKS"
        if missing:
            found += f", no {' or '.join(missing)}"
        raise DistributedSetupError(
            f"SLURM_NTASKS={n}: {n} processes are asked for, but this one was not started by "
            f"srun as one of them ({found}); run the command through srun (srun python -m "
            "lesionjax.main ...), or unset SLURM_NTASKS for a single-process run"
        )


def initialize_from_env() -> bool:
    """Calls ``jax.distributed.initialize`` when the environment describes a multi-process job.

    Explicit: ``LESIONJAX_COORDINATOR=host:port``, ``LESIONJAX_NUM_PROCESSES``,
    ``LESIONJAX_PROCESS_ID`` (local multi-process and any launcher). Automatic: SLURM
    (``SLURM_NTASKS`` > 1, inside an ``srun`` step) and Cloud TPU pods, where JAX discovers the
    rest itself. ``LESIONJAX_INIT_TIMEOUT`` (seconds, default 300) bounds the wait for the
    other processes. Returns True when JAX was initialized for several processes.
    """
    import jax

    timeout = int(os.environ.get("LESIONJAX_INIT_TIMEOUT", "300"))
    coordinator = os.environ.get("LESIONJAX_COORDINATOR")
    if coordinator:
        try:
            n, pid = (
                int(os.environ[k]) for k in ("LESIONJAX_NUM_PROCESSES", "LESIONJAX_PROCESS_ID")
            )
        except (KeyError, ValueError):
            raise DistributedSetupError(
                "LESIONJAX_COORDINATOR is set: LESIONJAX_NUM_PROCESSES and LESIONJAX_PROCESS_ID "
                "must be set to integers too"
            ) from None
        jax.distributed.initialize(
            coordinator, num_processes=n, process_id=pid, initialization_timeout=timeout
        )
        return True
    check_slurm_step()
    if _slurm_tasks() > 1 or os.environ.get("TPU_WORKER_HOSTNAMES"):
        jax.distributed.initialize(initialization_timeout=timeout)
        return True
    return False


def agree_on_error(error: str | None, name: str) -> str | None:
    """Process 0's ``error`` (None: it succeeded), on every process; also a barrier named
    ``name``. The other processes' own ``error`` values are ignored."""
    import jax

    if jax.process_count() == 1:
        return error
    from jax.experimental import multihost_utils

    buffer = np.zeros(MAX_ERROR_BYTES + 1, np.uint8)
    if error is not None:
        data = error.encode("utf-8")[:MAX_ERROR_BYTES]
        buffer[0] = 1
        buffer[1 : 1 + len(data)] = np.frombuffer(data, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    multihost_utils.sync_global_devices(name)
    if received[0] == 0:
        return None
    return bytes(received[1:]).rstrip(b"\0").decode("utf-8", errors="replace")
