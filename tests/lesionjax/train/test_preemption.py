"""Stop signals: the first one is a request, the second stops at once, and every process of a
job reads the same answer from the step."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lesionjax.train.preemption import StopSignals
from lesionjax.train.trainer import with_stop_flag


def _handlers():
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


@pytest.fixture
def python_sigint():
    """SIGINT as an interactive Python has it (KeyboardInterrupt), whatever this process
    inherited: a test run started in the background has SIGINT ignored."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_the_first_signal_is_a_request_and_the_second_stops_at_once(python_sigint):
    before = _handlers()
    with StopSignals(announce=False) as signals:
        assert not signals.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.requested and signals.name == "SIGTERM"
        # The second (here Ctrl-C): the previous handler again, which raises KeyboardInterrupt.
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert _handlers() == before


def test_leaving_the_context_restores_the_handlers_untouched():
    before = _handlers()
    with StopSignals(announce=False) as signals:
        assert _handlers() != before
    assert not signals.requested
    assert _handlers() == before


def test_the_step_returns_the_flag_of_any_row_to_every_device():
    """One device's rows flagged (as one process's share of a global batch would be): the
    step's "stop" is 1 on every device, and the inner step never sees the flag."""
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    seen = []

    def inner(state, batch, key):
        seen.append(sorted(batch))
        return state + 1, {"loss": jnp.sum(batch["image"])}

    step = jax.jit(
        with_stop_flag(inner),
        in_shardings=(NamedSharding(mesh, P()), rows, None),
        out_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P())),
    )
    image = np.ones((8, 2), np.float32)
    for flagged, expected in ((None, 0.0), (5, 1.0)):
        stop = np.zeros(8, np.float32)
        if flagged is not None:
            stop[flagged] = 1.0  # row 5: the third device's share
        state, metrics = step(jnp.zeros(()), {"image": image, "stop": stop}, jax.random.key(0))
        assert float(metrics["stop"]) == expected
        assert all(float(s.data) == expected for s in metrics["stop"].addressable_shards)
        assert float(metrics["loss"]) == 16.0
    assert seen == [["image"]]  # traced once, without "stop"
