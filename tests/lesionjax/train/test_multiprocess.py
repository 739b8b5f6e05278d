"""Two local processes (jax.distributed over gloo), two fake CPU devices each: one global mesh."""

import json
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_evaluate_with_one_writer(tiny_main_command, child_env, tmp_path):
    port = _free_port()
    workdir = tmp_path / "run"
    procs = []
    for i in range(2):
        env = child_env(
            2,
            LESIONJAX_COORDINATOR=f"127.0.0.1:{port}",
            LESIONJAX_NUM_PROCESSES="2",
            LESIONJAX_PROCESS_ID=str(i),
        )
        cmd = tiny_main_command(
            workdir,
            "--config.train.epochs=2",
            "--config.train.log_every=1",
            "--config.train.precise_bn_batches=2",
        )
        log = open(tmp_path / f"proc{i}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        proc.wait(timeout=600)
        log.close()
    for i, (proc, _) in enumerate(procs):
        assert proc.returncode == 0, (tmp_path / f"proc{i}.log").read_text()[-3000:]

    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps))  # one writer: no step logged twice
    order = [json.loads(x) for x in (workdir / "data_order.jsonl").read_text().splitlines()]
    # Process 0 logs its local half of each global batch (2 of 4 slices).
    assert all(len(r["index"]) == 2 for r in order)
    summary = json.loads((workdir / "eval" / "summary.json").read_text())
    assert summary["n_volumes"] > 0
    assert "report:" in (tmp_path / "proc0.log").read_text()
    assert "report:" not in (tmp_path / "proc1.log").read_text()
