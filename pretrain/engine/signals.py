"""Stopping on a signal without losing work, and saying so in the exit code.

SIGTERM and SIGINT (``kill``, Ctrl-C, a job runner stopping its job) ask the run to stop: after the current optimizer
step every rank agrees, one checkpoint is saved together, nothing is exported, and the app exits with 128 + the
signal number, so ``a && b`` chains, Kubernetes Jobs and CI runners see a failure and ``resume=auto`` continues the
run. A second SIGTERM or SIGINT ends the process at once (killed by it; the shell reports 128 + n as well). On SLURM
with ``trainer.slurm_auto_requeue`` the time-limit warning (USR1, ``#SBATCH --signal=USR1@120``) stops the same way,
requeues the job and exits 138 (128 + USR1: not done, the rerun finishes); its handler stays installed for the whole
job, export and test included, so a late warning never kills the job.

The handlers only record the signal, in the process that installed them: forked DataLoader workers inherit them and
get the signal too (Ctrl-C signals the whole process group, SLURM every process of the step). The ranks agree at a
step boundary, inside the one all-reduce the training module does per step
(:meth:`~pretrain.engine.module.TrainingModule.on_before_optimizer_step`), so stopping costs no extra
synchronisation. Lightning's own SIGTERM handling is replaced: it exits 0 without a checkpoint, and it broadcasts
from inside the signal handler, wherever the signal lands in the other ranks' collectives.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch import Tensor

from pretrain.engine.run_checkpoints import RunCheckpoints
from pretrain.engine.step_metrics import StepEnds

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # in order of precedence when ranks got different ones
# Set by the first process of a run; the rank processes Lightning launches from it inherit it
# (see RunSignals.process_exit_code).
LAUNCHER_ENV = "VITFM_LAUNCHER_PID"


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal."""
    return 128 + signum


class RunSignals:
    """The signals one process of a run handles, and which of them the ranks agreed to stop for."""

    def __init__(self, requeue_signal: int | None) -> None:
        self.requeue_signal = requeue_signal
        self.handled = (*STOP_SIGNALS, *((requeue_signal,) if requeue_signal is not None else ()))
        self.received: int | None = None  # the first signal this process got
        self.agreed: int | None = None  # the signal every rank stopped for
        self.checkpointed = False  # the ranks wrote the checkpoint of the step they stopped after
        self.on_exit_now: Callable[[], None] | None = None  # ends the rank processes this one launched
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle the signals here (again: Lightning replaces the SIGTERM handler whenever a fit or test starts)."""
        self._pid = os.getpid()
        for signum in self.handled:
            previous = signal.signal(signum, self._on_signal)
            self._previous.setdefault(signum, previous)
        if self.received in STOP_SIGNALS:
            self._arm_second_signal()

    def _arm_second_signal(self) -> None:
        """After a stop signal the next one ends the process at once. Without ranks of its own to end first, the
        default action does it, even while the process is stuck in a collective or in native code (where no
        Python handler runs); the signal's code is then the shell's 128 + n."""
        if self.on_exit_now is None:
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a DataLoader worker: its rank decides
        # Only this process's own second stop signal: the other ranks' first ones arrive milliseconds apart, maybe
        # after the step in which they agreed, and must not end a rank in the middle of the shared checkpoint.
        if signum in STOP_SIGNALS and self.received in STOP_SIGNALS:
            os.write(2, f"signal {signum} again: exiting now, without a checkpoint\n".encode())
            if self.on_exit_now is not None:
                self.on_exit_now()
            os._exit(exit_code(signum))
        if self.received is None or (signum in STOP_SIGNALS and self.received not in STOP_SIGNALS):
            self.received = signum  # a stop outranks a requeue
        if signum in STOP_SIGNALS:
            self._arm_second_signal()

    def vote(self, like: Tensor) -> Tensor:
        """This process's signal as a one-hot over :attr:`handled`, on ``like``'s device (no host copy)."""
        votes = like.new_zeros(len(self.handled))
        if self.received is not None:
            votes[self.handled.index(self.received)] = 1
        return votes

    def agree(self, counts: Sequence[float]) -> int | None:
        """The signal the ranks stop for, from the sum of their votes: a stop before a requeue, SIGINT first."""
        for signum, count in zip(self.handled, counts, strict=True):
            if count:
                self.agreed = signum
                return signum
        return None

    @property
    def stop_signal(self) -> int | None:
        """The stop signal (SIGTERM/SIGINT) this process got or its ranks agreed on, if any."""
        for signum in (self.agreed, self.received):
            if signum in STOP_SIGNALS:
                return signum
        return None

    @property
    def exit_signal(self) -> int | None:
        """The signal the process ends for: a stop signal, or the requeue signal once the ranks stopped for it."""
        if self.stop_signal is not None:
            return self.stop_signal
        return self.requeue_signal if self.requeued else None

    @property
    def requeued(self) -> bool:
        """Whether the ranks stopped for the requeue signal with their checkpoint written: the job must run again
        (also when a stop signal, such as the time limit's SIGTERM, comes after it)."""
        return self.requeue_signal is not None and self.agreed == self.requeue_signal and self.checkpointed

    def process_exit_code(self) -> int:
        """128 + :attr:`exit_signal`, from the process that reports to the user. Ranks that Lightning launched from
        the first process report to it and end with 0, because its launcher kills every process, the first one
        included, when one exits non-zero; so do the ranks but 0 after a requeue, which srun's
        ``--kill-on-bad-exit`` would otherwise end before rank 0 has requeued the job."""
        signum = self.exit_signal
        assert signum is not None
        reports_to_rank_0 = signum == self.requeue_signal and not is_slurm_rank_0()
        return 0 if launched_by_a_rank() or reports_to_rank_0 else exit_code(signum)


def is_slurm_rank_0() -> bool:
    """Rank 0 of the SLURM step (the requeue signal is only handled inside one)."""
    return os.environ.get("SLURM_PROCID") == "0"


_active: RunSignals | None = None


def launched_by_a_rank() -> bool:
    """Whether this process is a rank that the first process of the run started (Lightning's launcher for
    ``trainer.devices > 1`` outside torchrun/SLURM)."""
    return os.environ.get(LAUNCHER_ENV) == str(os.getppid())


def active_signals() -> RunSignals | None:
    """The signals of the run this process is in (None outside :func:`handle_signals`)."""
    return _active


def stop_requested() -> bool:
    """Whether this process got (or its ranks agreed on) SIGTERM/SIGINT: then it writes no exports or results."""
    return _active is not None and _active.stop_signal is not None


def requeue_signal(trainer: Mapping[str, Any]) -> int | None:
    """USR1 in a SLURM job with ``trainer.slurm_auto_requeue``, else None."""
    in_job = "SLURM_JOB_ID" in os.environ  # checked first: detect() warns outside srun, also outside any job
    return signal.SIGUSR1 if trainer["slurm_auto_requeue"] and in_job and SLURMEnvironment.detect() else None


@contextmanager
def handle_signals(trainer: Mapping[str, Any]) -> Iterator[RunSignals]:
    """Handle the run's signals for the whole job. Leaving after the ranks stopped for a signal exits with its code
    (:meth:`RunSignals.process_exit_code`); after SLURM's warning rank 0 requeues the job first, as the process's last
    act, so that SLURM stops the step only once the checkpoint is written and the loggers are closed.

    Also when a library turned the signal into ``SystemExit`` (Lightning raises ``SIGTERMException``, code 0), or
    failed after a stop signal (SLURM stops W&B's service process together with the ranks) or after the requeue
    checkpoint; an error after the requeue signal but before its checkpoint is raised as it is.
    """
    global _active
    signals = RunSignals(requeue_signal(trainer))
    first = not launched_by_a_rank()
    if first:  # the ranks this process launches inherit it; it goes with the run (later subprocesses are not ranks)
        os.environ[LAUNCHER_ENV] = str(os.getpid())
    signals.install()
    _active = signals
    try:
        yield signals
    except SystemExit:
        if signals.exit_signal is None:
            raise
    except Exception:
        # After a stop signal the process is ending anyway (SLURM stops W&B's service process with the ranks, so the
        # next log call raises); after the requeue signal only once its checkpoint is written.
        if not (signals.checkpointed or signals.stop_signal is not None):
            raise
        log.exception("failed after signal %d; resume=auto continues from the newest checkpoint", signals.exit_signal)
    finally:
        _active = None
        signals.restore()
        if signals.stop_signal is not None:  # on the way out: another stop signal still ends the process at once
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
        if first:
            os.environ.pop(LAUNCHER_ENV, None)
    if signals.requeued:
        # Not done: an exit code of 0 would let a job runner (submitit, `a && b`) take the run for finished.
        log.info("stopped for SLURM's requeue: the rerun resumes from the checkpoint")
        if is_slurm_rank_0():
            requeue_slurm_job()
    if signals.exit_signal is None:
        return
    if signals.stop_signal is not None:
        log.info("stopped by signal %d: resume with the same run_dir (resume=auto)", signals.stop_signal)
    raise SystemExit(signals.process_exit_code())


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this job (or array task); SLURM then stops it and runs it again."""
    job_id = os.environ["SLURM_JOB_ID"]
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    except FileNotFoundError:
        log.warning("cannot requeue SLURM job %s: scontrol is not on PATH", job_id)
        return
    if result.returncode == 0:
        log.info("requeued SLURM job %s", job_id)
    else:
        log.warning("scontrol requeue %s failed: %s", job_id, result.stderr.strip())


class StopOnSignal(Callback):
    """After the optimizer step in which any rank got a handled signal: one checkpoint by all ranks, then stop;
    rank 0 requeues the job on its way out when the signal was SLURM's warning (:func:`handle_signals`).

    ``checkpoint_dir/step_N.ckpt``, written by ``checkpoints`` (unless its periodic save just wrote that step), is the
    newest checkpoint, so ``resume=auto`` picks it.
    """

    def __init__(self, signals: RunSignals, checkpoints: RunCheckpoints) -> None:
        self.signals = signals
        self.checkpoints = checkpoints
        self.stopped_for: int | None = None
        self._step_ends = StepEnds()

    def _take_back_handlers(self, trainer: L.Trainer) -> None:
        self.signals.install()
        launcher = trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher) and launcher.procs:
            self.signals.on_exit_now = lambda: launcher.kill(signal.SIGKILL)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_back_handlers(trainer)
        self._step_ends.start(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_back_handlers(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._take_back_handlers(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._step_ends(trainer):
            return  # between two optimizer steps
        signum = self.signals.agreed if getattr(pl_module, "votes_on_signals", False) else self._agree(trainer)
        if signum is None:
            return
        self.checkpoints.save(trainer)
        trainer.should_stop = True
        self.stopped_for = signum
        self.signals.checkpointed = True  # a requeue signal: rank 0 requeues on leaving handle_signals
        log.info("signal %d: checkpointed step %d and stopped", signum, trainer.global_step)

    def _agree(self, trainer: L.Trainer) -> int | None:
        """For modules that do not vote in their own step reduction: one small all-reduce of its own."""
        votes = self.signals.vote(torch.zeros((), device=trainer.strategy.root_device))
        if trainer.world_size > 1:
            votes = trainer.strategy.reduce(votes, reduce_op="sum")
        return self.signals.agree(votes.tolist())


def stopped_by_signal(trainer: L.Trainer) -> int | None:
    """The signal that stopped the fit (None: it ran to its end). The app then exits with the signal's code once
    it leaves :func:`handle_signals`; after a SLURM warning the requeued job finishes the work."""
    for callback in trainer.callbacks:
        if isinstance(callback, StopOnSignal) and callback.stopped_for is not None:
            log.info("stopped at step %d by signal %d", trainer.global_step, callback.stopped_for)
            return callback.stopped_for
    return None
