"""Runs an experiment's jobs: in order in this process, or ``workers`` at a time in worker
processes, each job once the jobs it needs are complete.

A ``Job`` is a folder with a completion file (``done``), a picklable ``run() -> dict`` (a
``functools.partial`` of a module-level function) and the names of the jobs it ``needs`` (the
one that builds the shards it reads, the pretext run it starts from). A job whose ``done`` file
exists is skipped, so running the same jobs again resumes. Worker processes are spawned (JAX
is not fork-safe), share the persistent compilation cache and this process's devices, and run
one job at a time each; the runner prints one line per job as it finishes. A failing job stops
new jobs from starting; the ones running finish (their results stay), and the error is raised.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from lesionjax.core.errors import ConfigError, UserError


@dataclasses.dataclass
class Job:
    kind: str  # e.g. "pretext" | "cavity" | "segment" | "icm" | "tsne_pool"
    name: str  # the folder, relative to the experiment's
    done: Path  # exists when the job is complete
    run: Callable[[], dict]  # picklable when run in worker processes
    needs: tuple[str, ...] = ()  # names of jobs that must be complete first


def check_jobs(jobs: Sequence[Job]) -> None:
    """Every job's ``needs`` names an earlier job (so the order given is a valid order)."""
    seen: set[str] = set()
    for job in jobs:
        missing = [n for n in job.needs if n not in seen]
        if missing:
            raise ConfigError(f"job {job.name}: needs {missing}, which are not planned before it")
        seen.add(job.name)


def dependents(jobs: Sequence[Job]) -> dict[str, int]:
    """How many jobs need each job, directly or through others."""
    below: dict[str, set[str]] = {j.name: set() for j in jobs}
    for job in reversed(jobs):  # needs point backwards (check_jobs)
        for n in job.needs:
            below[n] |= below[job.name] | {job.name}
    return {name: len(s) for name, s in below.items()}


def estimate_seconds(jobs: Sequence[Job], measured: Mapping[str, list[float]],
                     defaults: Mapping[str, float], workers: int = 1) -> float:  # fmt: skip
    """Seconds the jobs will take: each kind's mean measured time so far, else ``defaults``'s
    (60 s for a kind it does not name), shared out over ``workers``."""
    total = 0.0
    for job in jobs:
        seen = measured.get(job.kind)
        total += sum(seen) / len(seen) if seen else float(defaults.get(job.kind, 60))
    return total / max(1, min(workers, len(jobs) or 1))


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _worker_init(cache_dir: str | None, verbosity: int) -> None:
    from absl import flags, logging

    flags.FLAGS.mark_as_parsed()  # grain reads absl flags; there is no absl.app.run here
    logging.set_verbosity(verbosity)
    import jax

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


class _InProcess:
    """The executor of ``workers=1``: runs each job here, when it is submitted."""

    def submit(self, fn):
        future = futures.Future()
        try:
            future.set_result(fn())
        except BaseException as err:  # noqa: BLE001 - handed to the caller, as a pool does
            future.set_exception(err)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        del wait, cancel_futures


def _executor(workers: int):
    if workers <= 1:
        return _InProcess()
    import multiprocessing

    import jax
    from absl import logging

    return futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(jax.config.jax_compilation_cache_dir, logging.get_verbosity()),
    )


def run_jobs(
    jobs: Sequence[Job],
    *,
    title: str,
    workers: int = 1,
    defaults: Mapping[str, float] = {},  # noqa: B006 - read only
    headline: Callable[[str, dict], str] = lambda kind, result: "done",
) -> float:
    """Runs the jobs not yet done (``workers`` at a time), printing a line before (how many,
    an estimate) and one per job; returns the seconds taken. Raises the first job's error."""
    check_jobs(jobs)
    workers = max(1, int(workers))
    todo = [j for j in jobs if not j.done.is_file()]
    complete = {j.name for j in jobs if j.done.is_file()}
    counts: dict[str, int] = {}
    for j in todo:
        counts[j.kind] = counts.get(j.kind, 0) + 1
    how = f" on {workers} worker processes" if workers > 1 and todo else ""
    print(
        f"{title}: {len(jobs)} jobs, {len(jobs) - len(todo)} already done; to run: "
        + (", ".join(f"{n} {k}" for k, n in counts.items()) or "nothing")
        + f"{how}; estimate {minutes(estimate_seconds(todo, {}, defaults, workers))}",
        flush=True,
    )  # fmt: skip
    index = {j.name: i for i, j in enumerate(jobs, 1)}
    if workers > 1:  # the jobs most others wait for first (then in the order given)
        waiting = dependents(jobs)
        todo.sort(key=lambda j: (-waiting[j.name], index[j.name]))
    measured: dict[str, list[float]] = {}
    running: dict[futures.Future, tuple[Job, float]] = {}
    errors: list[BaseException] = []
    t_all = time.perf_counter()
    executor = _executor(workers if len(todo) > 1 else 1)
    try:
        while todo or running:
            while not errors and len(running) < workers:
                ready = next((j for j in todo if all(n in complete for n in j.needs)), None)
                if ready is None:
                    break
                todo.remove(ready)
                running[executor.submit(ready.run)] = (ready, time.perf_counter())
            if not running:
                break  # nothing can start: an error stopped the rest
            finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: index[running[f][0].name]):
                job, t0 = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    errors.append(UserError(
                        f"{job.name}: its worker process died (out of memory? run with fewer "
                        "workers); running the command again resumes"))  # fmt: skip
                    continue
                except BaseException as err:  # noqa: BLE001 - re-raised below
                    errors.append(err)
                    continue
                seconds = time.perf_counter() - t0
                measured.setdefault(job.kind, []).append(seconds)
                complete.add(job.name)
                left = estimate_seconds(todo + [j for j, _ in running.values()], measured,
                                        defaults, workers)  # fmt: skip
                print(
                    f"[{index[job.name]}/{len(jobs)}] {job.name}: {seconds:.0f} s, "
                    f"{headline(job.kind, result)}; about {minutes(left)} left",
                    flush=True,
                )
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    if errors:
        raise errors[0]
    return time.perf_counter() - t_all
