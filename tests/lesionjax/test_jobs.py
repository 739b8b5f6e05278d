"""The job runner: worker processes start a job only once the jobs it needs are complete, run
independent jobs at the same time, stop starting jobs after a failure, and skip what is done."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest

from lesionjax.core.errors import ConfigError
from lesionjax.jobs import Job, check_jobs, dependents, run_jobs

# A job: a child process that writes its start time, sleeps, then writes its end time into its
# done file (or exits 3 without writing it). Picklable, so worker processes can run it.
_SCRIPT = """
import sys, time
start, done, seconds, fail = sys.argv[1:]
open(start, "w").write(repr(time.time()))
time.sleep(float(seconds))
if fail == "1":
    sys.exit(3)
open(done, "w").write(repr(time.time()))
"""


def _job(tmp: Path, name: str, needs=(), seconds=0.3, fail=False) -> Job:
    args = [sys.executable, "-c", _SCRIPT, str(tmp / f"{name}.start"), str(tmp / f"{name}.done"),
            str(seconds), "1" if fail else "0"]  # fmt: skip
    run = functools.partial(subprocess.run, args, check=True)
    return Job("test", name, tmp / f"{name}.done", run, tuple(needs))


def _times(tmp: Path, name: str) -> tuple[float, float]:
    return float((tmp / f"{name}.start").read_text()), float((tmp / f"{name}.done").read_text())


def test_a_job_starts_after_what_it_needs_and_independent_jobs_overlap(tmp_path):
    jobs = [
        _job(tmp_path, "a", seconds=1.0),
        _job(tmp_path, "b", seconds=0.3),  # independent of a: runs beside it, ends first
        _job(tmp_path, "c", needs=("a",), seconds=0.2),
        _job(tmp_path, "d", needs=("a", "b"), seconds=0.2),
    ]
    run_jobs(jobs, title="t", workers=2)
    t = {j.name: _times(tmp_path, j.name) for j in jobs}
    assert t["b"][0] < t["a"][1] and t["a"][0] < t["b"][1]  # a and b overlapped
    assert t["c"][0] >= t["a"][1]
    assert t["d"][0] >= max(t["a"][1], t["b"][1])


def test_one_worker_runs_the_jobs_in_the_order_given(tmp_path, capsys):
    jobs = [_job(tmp_path, n, seconds=0.05) for n in ("x", "y", "z")]
    run_jobs(jobs, title="t", workers=1)
    starts = [_times(tmp_path, n)[0] for n in ("x", "y", "z")]
    assert starts == sorted(starts)
    out = capsys.readouterr().out
    assert out.index("[1/3] x") < out.index("[2/3] y") < out.index("[3/3] z")


def test_a_failed_job_stops_what_needs_it_and_running_jobs_finish(tmp_path):
    jobs = [
        _job(tmp_path, "slow", seconds=1.5),
        _job(tmp_path, "bad", seconds=0.1, fail=True),
        _job(tmp_path, "after_bad", needs=("bad",)),
        _job(tmp_path, "later", needs=("slow",)),
    ]
    with pytest.raises(subprocess.CalledProcessError):
        run_jobs(jobs, title="t", workers=2)
    assert (tmp_path / "slow.done").is_file()  # the running job finished
    assert not (tmp_path / "after_bad.start").exists()
    assert not (tmp_path / "later.start").exists()  # nothing new started after the failure
    # the same command again resumes: the finished job is skipped, the rest run
    jobs[1] = _job(tmp_path, "bad", seconds=0.1)
    (tmp_path / "slow.start").unlink()
    run_jobs(jobs, title="t", workers=2)
    assert not (tmp_path / "slow.start").exists()
    assert all(j.done.is_file() for j in jobs)


def test_needs_must_name_an_earlier_job(tmp_path):
    with pytest.raises(ConfigError, match="job b: needs"):
        check_jobs([_job(tmp_path, "b", needs=("a",)), _job(tmp_path, "a")])


def test_dependents_count_jobs_waiting_directly_or_through_others(tmp_path):
    jobs = [
        _job(tmp_path, "a"),
        _job(tmp_path, "b", needs=("a",)),
        _job(tmp_path, "c", needs=("b",)),
        _job(tmp_path, "d", needs=("a", "c")),
        _job(tmp_path, "e"),
    ]
    assert dependents(jobs) == {"a": 3, "b": 2, "c": 1, "d": 0, "e": 0}
