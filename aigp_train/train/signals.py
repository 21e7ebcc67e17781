"""SIGTERM / SIGUSR1 -> checkpoint at the next optimizer-step boundary, then exit cleanly.

SLURM warns a job before its time limit or preemption with the signal of ``--signal``
(``launch/*.slurm`` use ``B:USR1@120``: the batch shell gets it and forwards it to the training
processes, see ``launch/_common.sh``), and ``scancel`` / a preempting job sends SIGTERM. The
handler only sets a flag: checkpointing inside a signal handler would race the step in flight.
At each step boundary the ranks agree (an all-reduce of the flag: one rank may have been signalled
a step earlier than another), write one checkpoint together and exit with ``EXIT_PREEMPTED`` so
the launcher knows to requeue rather than to report success.

Generation stages have no step to finish: ``stop_at_once`` makes the signal raise ``Preempted`` in
the main thread at once. Their unit of resume is a shard written by rename, so the shard in flight is
dropped and redone by the requeued job, and the finished ones are skipped: finishing the shard first
could outlast the 120 s warning (a teacher shard is minutes), and a job killed at its time limit is
not requeued.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

from aigp_train.distributed.dist import any_rank, print0

__all__ = ["PreemptionHandler", "Preempted", "EXIT_PREEMPTED", "stop_at_once"]

# EX_TEMPFAIL from sysexits.h: "temporary failure; the user is invited to retry".
EXIT_PREEMPTED = 75


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; exits the process with EXIT_PREEMPTED."""

    def __init__(self, step: int | None = None):
        super().__init__(EXIT_PREEMPTED)
        self.step = step


class PreemptionHandler:
    """Installs handlers for SIGTERM and SIGUSR1; ``should_stop()`` is the collective check."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {}

    def install(self) -> "PreemptionHandler":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        if self.received is None:
            # Only async-signal-safe work here: a flag and one write to stderr.
            sys.stderr.write(f"[aigp] received {signal.Signals(signum).name}: "
                             "checkpointing at the next step boundary\n")
        self.received = signum

    def should_stop(self) -> bool:
        """True on every rank if any rank received a signal (a collective: call it on all ranks)."""
        stop = any_rank(self.received is not None)
        if stop:
            print0("[aigp] preemption signal: writing a checkpoint and exiting for requeue")
        return stop


@contextlib.contextmanager
def stop_at_once(what: str):
    """Inside: SIGTERM / SIGUSR1 raise ``Preempted`` (exit 75) at once; ``what`` says what survives it."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def on_signal(signum, frame):
        sys.stderr.write(f"[aigp] received {signal.Signals(signum).name}: exiting for requeue; {what}\n")
        raise Preempted()

    previous = {sig: signal.signal(sig, on_signal) for sig in PreemptionHandler.SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
