"""Multi-process set-up from the environment, and agreeing on an error across processes.

``initialize_from_env`` must run before any JAX computation. ``agree_on_error`` lets work done
on process 0 alone (building shards) fail on every process at once, instead of leaving the
others waiting at a barrier. ``peer_lost`` recognises the error a process gets when another
process of its job has died, so that the command can say so and exit instead of waiting.
"""

from __future__ import annotations

import os

import numpy as np

from lesionjax.core.errors import UserError

# The longest error message carried to the other processes (bytes of UTF-8).
MAX_ERROR_BYTES = 4096


class DistributedSetupError(UserError):
    """The environment asks for several processes but they cannot meet."""


class PeerLostError(UserError):
    """Another process of this job stopped (killed, crashed, its host lost)."""


# What JAX's runtime says when a collective or the coordination service loses a process: gloo
# (CPU) fails at once with "Connection closed by peer"; NCCL hangs until the coordination
# service misses the process's heartbeats (LESIONJAX_HEARTBEAT_TIMEOUT) and reports it.
PEER_LOST_SIGNS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "coordinationservice",
    "heartbeat",
    "tasks have crashed",
    "barrier timed out",
    "deadline_exceeded",
    "unavailable:",
)


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
    (``SLURM_NTASKS`` > 1, inside an ``srun`` step), Cloud TPU pods (``TPU_WORKER_HOSTNAMES``)
    and ``LESIONJAX_DISTRIBUTED=auto`` (what ``launch/tpu_vm.sh`` sets: any cluster JAX can
    detect), where JAX discovers the rest itself. ``LESIONJAX_INIT_TIMEOUT`` (seconds, default
    300) bounds the wait for the other processes, ``LESIONJAX_HEARTBEAT_TIMEOUT`` (seconds,
    default 100) how long a silent process counts as alive. Returns True when JAX was
    initialized for several processes.
    """
    import jax

    timeout = int(os.environ.get("LESIONJAX_INIT_TIMEOUT", "300"))
    # Seconds without a heartbeat after which the others are told a process is dead.
    heartbeat = int(os.environ.get("LESIONJAX_HEARTBEAT_TIMEOUT", "100"))
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
            coordinator,
            num_processes=n,
            process_id=pid,
            initialization_timeout=timeout,
            heartbeat_timeout_seconds=heartbeat,
        )
        return True
    check_slurm_step()
    auto = os.environ.get("LESIONJAX_DISTRIBUTED", "").lower() == "auto"
    if _slurm_tasks() > 1 or os.environ.get("TPU_WORKER_HOSTNAMES") or auto:
        jax.distributed.initialize(
            initialization_timeout=timeout, heartbeat_timeout_seconds=heartbeat
        )
        return True
    return False


def peer_lost(err: BaseException) -> PeerLostError | None:
    """A PeerLostError explaining ``err`` when it (or an exception it was raised from) is the
    runtime's report of a lost process in a multi-process job; None otherwise."""
    import jax

    if jax.process_count() == 1:
        return None
    seen, current = set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if any(sign in text.lower() for sign in PEER_LOST_SIGNS):
            first = next((line.strip() for line in text.splitlines() if line.strip()), text)
            n = jax.process_count()
            return PeerLostError(
                f"process {jax.process_index()} of {n}: another process of this job stopped "
                f"({first[:300]}); stopping this one too. Start all {n} processes again to "
                "resume from the last checkpoint"
            )
        current = current.__cause__ or current.__context__
    return None


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


def allgather_objects(obj) -> list:
    """Every process's ``obj`` (picklable), in process order, on every process (two small
    all-gathers: the lengths, then the bytes padded to the longest)."""
    import pickle

    import jax

    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64)))
    lengths = lengths.reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [pickle.loads(row[:n].tobytes()) for row, n in zip(gathered, lengths, strict=True)]
