"""Stopping training on a signal without losing work: SIGTERM (a preemption, ``scancel``, a
spot VM's notice) and SIGINT (Ctrl-C) ask the trainer to stop after the step in flight.

``StopSignals`` turns the first such signal into a flag instead of killing the process; a second
one restores the previous handler and delivers itself (Ctrl-C twice stops at once). The trainer
sends each process's flag with every batch, so all processes of a job read the same answer (the
OR over the processes) from the same step's output and stop at the same step, without an extra
collective (JAX's ``reached_preemption_sync_point`` does the same with its coordination service,
but only for SIGTERM and only in multi-process runs).
"""

from __future__ import annotations

import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """A context manager: while inside, the first SIGTERM or SIGINT sets ``received``.

    Handlers are installed only from the main thread (Python delivers signals there; elsewhere
    this is a no-op and ``received`` stays None). The previous handlers come back on exit.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, *, announce: bool = True):
        self.signals = signals
        self.announce = announce
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def _handle(self, signum, frame) -> None:
        del frame
        if self.received is not None:  # the second one: stop at once, the usual way
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        if self.announce:
            print(
                f"\n{signal.Signals(signum).name}: stopping after the current step and saving a "
                "checkpoint (send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
