"""Test set-up: 4 fake CPU devices, set before JAX starts, a compilation cache for the session,
and absl flags marked parsed."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache per test session, inherited by every child process: the
# suite compiles the same small programs again in dozens of subprocesses (tiny main jobs).
# Measured on four of test_train.py's end-to-end tests: 179 s without, 142 s caching programs
# that compile in >= 0.5 s, 132 s caching every program (the setting here).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _CACHE = tempfile.mkdtemp(prefix="lesionjax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pathlib  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain's mp_prefetch reads absl flags; outside absl.app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real scans in ../shared/data; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (a fresh clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> pathlib.Path:
    """Ten small synthetic head CTs (64x64x12) in the pairs layout, generated once per session."""
    from data_prep.synthetic import phantom

    root = tmp_path_factory.mktemp("phantom")
    phantom.generate_dataset(
        root, 10, seed=3, shape=(64, 64, 12), spacing=(3.6, 3.6, 12.0), progress=False
    )
    return root


@pytest.fixture(scope="session")
def build():
    """``fn(cases, out, dataset="pairs", *, n_folds=5, reader_problems=(), ..., **options) ->
    (manifest, skipped)``: ``shard_writer.build_cases`` with the plan options (windows, size,
    spacing, ...) as keywords, one worker and no progress bar."""
    from data_prep.shard_writer import build_cases

    def run(cases, out, dataset="pairs", *, n_folds=5, reader_problems=(), workers=1, **options):
        return build_cases(
            dataset,
            cases,
            out,
            options,
            n_folds=n_folds,
            workers=workers,
            progress=False,
            reader_problems=reader_problems,
        )

    return run


@pytest.fixture(scope="session")
def tiny_shards(tiny_phantom, build, tmp_path_factory) -> pathlib.Path:
    """The tiny phantom set built into shards (brain + ich windows, 5 folds)."""
    from data_prep.layouts.pairs import read_pairs_layout

    out = tmp_path_factory.mktemp("shards")
    _, skipped = build(read_pairs_layout(tiny_phantom), out, windows=["brain", "ich"])
    assert not skipped, skipped
    return out


@pytest.fixture(scope="session")
def tiny_main_command(tiny_phantom):
    """``fn(workdir, *overrides) -> argv`` running the main job on the tiny phantom set (tiny
    demo variant, no progress bar, every batch's record indices logged to data_order.jsonl)."""
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]

    def command(workdir: pathlib.Path, *overrides: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lesionjax.main",
            f"--config={repo / 'configs' / 'demo.py'}:tiny",
            f"--workdir={workdir}",
            "--config.progress=False",
            "--config.data.source=folder",
            f"--config.data.raw_dir={tiny_phantom}",
            "--config.data.policy=all",
            "--config.train.batch_size=4",
            "--config.train.log_data_order=True",
            *overrides,
        ]

    return command


@pytest.fixture(scope="session")
def tiny_run(tiny_main_command, tmp_path_factory) -> pathlib.Path:
    """The tiny demo trained once for 1 epoch (~25 s) in a child process. Tests may rewrite its
    ``eval/`` folder (re-evaluation), nothing else: copy it first to change anything."""
    import subprocess

    workdir = tmp_path_factory.mktemp("tiny_run") / "run"
    command = tiny_main_command(workdir, "--config.train.epochs=1")
    subprocess.run(command, env=subprocess_env(2), check=True, capture_output=True)
    return workdir


@pytest.fixture(scope="session")
def tiny_run_seed1(tiny_main_command, tmp_path_factory) -> pathlib.Path:
    """``tiny_run`` with another seed: the same folds, other weights (read-only)."""
    import subprocess

    workdir = tmp_path_factory.mktemp("tiny_run_seed1") / "run"
    command = tiny_main_command(workdir, "--config.train.epochs=1", "--config.seed=1")
    subprocess.run(command, env=subprocess_env(2), check=True, capture_output=True)
    return workdir


# The overrides of the multi-process comparisons: one epoch at lr 1e-3 (the tiny demo's 1e-2 is
# chaotic: reduction-order noise between one process and two grows to ~1e-2 in the loss).
MULTIPROCESS_OVERRIDES = (
    "--config.train.epochs=1",
    "--config.train.log_every=1",
    "--config.train.precise_bn_batches=2",
    "--config.optim.lr=1e-3",
)


@pytest.fixture(scope="session")
def one_process_run(tiny_main_command, tmp_path_factory) -> pathlib.Path:
    """The tiny demo with ``MULTIPROCESS_OVERRIDES`` as one process with 4 devices: what a
    two-process run (2 devices each) must give (read-only)."""
    import subprocess

    workdir = tmp_path_factory.mktemp("one_process") / "run"
    command = tiny_main_command(workdir, *MULTIPROCESS_OVERRIDES)
    subprocess.run(command, env=subprocess_env(4), check=True, capture_output=True)
    return workdir


@pytest.fixture(scope="session")
def multiprocess_overrides():
    return MULTIPROCESS_OVERRIDES


def subprocess_env(devices: int, **extra: str) -> dict[str, str]:
    """Environment for a child JAX process on the CPU with ``devices`` fake devices."""
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra
    )
    return env


@pytest.fixture(scope="session")
def child_env():
    return subprocess_env


@pytest.fixture(scope="session")
def checkpoint_params():
    """``fn(workdir, step) -> list of np.ndarray``: the parameters a run saved at ``step``, read
    onto this process's first device whatever mesh saved them (independently of the trainer)."""

    def read(workdir: pathlib.Path, step: int):
        import jax
        import numpy as np
        import orbax.checkpoint as ocp

        path = (pathlib.Path(workdir) / "checkpoints" / str(step) / "state").absolute()
        checkpointer = ocp.StandardCheckpointer()
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            checkpointer.metadata(path).item_metadata,
        )
        restored = checkpointer.restore(path, target)
        return [np.asarray(x) for x in jax.tree.leaves(restored["params"])]

    return read
