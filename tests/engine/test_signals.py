"""The signal handling of a run, in-process with real signals: what is recorded, what the ranks agree on, and the
exit code on leaving the run."""

import os
import signal

import pytest
import torch

from pretrain.engine.signals import LAUNCHER_ENV, RunSignals, active_signals, handle_signals, stop_requested

TRAINER = {"slurm_auto_requeue": True}  # USR1 is handled only inside a SLURM job


@pytest.fixture
def in_slurm_job(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "pretrain")
    monkeypatch.setenv("SLURM_JOB_ID", "1")


@pytest.fixture(autouse=True)
def first_process(monkeypatch):
    monkeypatch.delenv(LAUNCHER_ENV, raising=False)


@pytest.fixture(autouse=True)
def pytests_own_handlers():
    """A stopped run leaves exit-at-once handlers behind (the process is on its way out); pytest is not."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_sigterm_is_recorded_and_leaving_the_run_exits_143():
    with pytest.raises(SystemExit) as leaving, handle_signals(TRAINER) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM  # the handler ran: the process is still here
        assert stop_requested()
    assert leaving.value.code == 128 + signal.SIGTERM
    assert active_signals() is None


def test_after_a_stop_signal_the_next_one_takes_its_default_action():
    with pytest.raises(SystemExit), handle_signals(TRAINER):
        os.kill(os.getpid(), signal.SIGTERM)
        # Armed at once: the kernel ends the process on the next one, even inside a collective or native code.
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # on its way out


def test_a_ranks_own_first_signal_after_the_ranks_agreed_is_recorded_not_fatal():
    # SLURM and torchrun signal the ranks milliseconds apart: this rank's SIGTERM may come after the step in which
    # the ranks agreed on another rank's; ending it then would cut the shared checkpoint short.
    with pytest.raises(SystemExit) as leaving, handle_signals(TRAINER) as signals:
        signals.agree([0, 1])
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM  # still here
    assert leaving.value.code == 128 + signal.SIGTERM


def test_a_library_exiting_0_after_sigterm_still_exits_143():
    # Lightning turns SIGTERM into SIGTERMException, a SystemExit with code None, when its handler saw it first.
    with pytest.raises(SystemExit) as leaving, handle_signals(TRAINER):
        os.kill(os.getpid(), signal.SIGTERM)
        raise SystemExit()
    assert leaving.value.code == 128 + signal.SIGTERM


def test_a_run_without_signals_leaves_quietly_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with handle_signals(TRAINER) as signals:
        assert signal.getsignal(signal.SIGTERM) != before
    assert signals.stop_signal is None
    assert signal.getsignal(signal.SIGTERM) == before


def test_rank_processes_launched_from_the_first_one_report_to_it_with_0(monkeypatch):
    monkeypatch.setenv(LAUNCHER_ENV, str(os.getppid()))  # as the ranks Lightning starts from the first process
    with pytest.raises(SystemExit) as leaving, handle_signals(TRAINER) as signals:
        signals.agree([0, 1])  # rank 0 got SIGTERM; this rank learns it from the step's reduction
    assert leaving.value.code == 0


def test_a_run_in_this_process_leaves_no_trace_that_would_make_later_subprocesses_ranks():
    with handle_signals(TRAINER):
        assert os.environ[LAUNCHER_ENV] == str(os.getpid())
    assert LAUNCHER_ENV not in os.environ


def test_a_warning_signal_after_training_is_handled_and_the_job_exits_0(in_slurm_job):
    with handle_signals(TRAINER) as signals:
        os.kill(os.getpid(), signal.SIGUSR1)  # the default action would end the process
        assert signals.received == signal.SIGUSR1
        assert not stop_requested()  # a requeue, not a stop: export and test still run


@pytest.fixture
def scontrol_calls(tmp_path, monkeypatch):
    """An ``scontrol`` first on PATH that records its arguments (the real one runs in tests/slurm)."""
    calls = tmp_path / "scontrol_calls"
    script = tmp_path / "bin" / "scontrol"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_rank_0_stopped_for_the_warning_signal_requeues_on_its_way_out_and_exits_138(
    in_slurm_job, scontrol_calls, monkeypatch
):
    # 138, not 0: submitit records a job as finished when its function returns, and it is not.
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(SystemExit) as leaving, handle_signals(TRAINER) as signals:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.agree(signals.vote(torch.zeros(())).tolist()) == signal.SIGUSR1
        signals.checkpointed = True  # StopOnSignal, after the step's checkpoint
        assert not scontrol_calls.exists()  # not before the run has closed its loggers
    assert scontrol_calls.read_text() == "requeue 1\n"
    assert leaving.value.code == 128 + signal.SIGUSR1


def test_the_other_ranks_leave_the_requeue_to_rank_0_and_exit_0(in_slurm_job, scontrol_calls, monkeypatch):
    # srun --kill-on-bad-exit would end rank 0 before it requeued the job if they exited non-zero.
    monkeypatch.setenv("SLURM_PROCID", "1")
    with pytest.raises(SystemExit) as leaving, handle_signals(TRAINER) as signals:
        signals.agree([0, 0, 1])  # another rank got the warning
        signals.checkpointed = True
    assert not scontrol_calls.exists()
    assert leaving.value.code == 0


def test_sigterm_after_the_requeue_checkpoint_still_requeues_and_exits_143(in_slurm_job, scontrol_calls, monkeypatch):
    # The time limit's SIGTERM while the loggers close: without the requeue, SLURM would end the job for good.
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(SystemExit) as leaving, handle_signals(TRAINER) as signals:
        signals.agree([0, 0, 1])
        signals.checkpointed = True
        os.kill(os.getpid(), signal.SIGTERM)
    assert scontrol_calls.read_text() == "requeue 1\n"
    assert leaving.value.code == 128 + signal.SIGTERM


def test_an_error_before_the_requeue_checkpoint_is_raised_and_nothing_is_requeued(
    in_slurm_job, scontrol_calls, monkeypatch
):
    # A non-finite loss or a full disk at the agreed step: the run failed, it must not end as a requeue or as done.
    monkeypatch.setenv("SLURM_PROCID", "0")
    with pytest.raises(OSError), handle_signals(TRAINER) as signals:
        signals.agree([0, 0, 1])
        raise OSError("No space left on device")
    assert not scontrol_calls.exists()


def test_an_error_after_sigterm_exits_with_the_signals_code():
    # SLURM stops W&B's service process with the ranks: the next log call raises, maybe before the stop checkpoint
    # (resume=auto then continues from the newest periodic one).
    with pytest.raises(SystemExit) as leaving, handle_signals(TRAINER):
        os.kill(os.getpid(), signal.SIGTERM)
        raise ConnectionResetError("Connection lost")
    assert leaving.value.code == 128 + signal.SIGTERM


def test_an_error_without_a_signal_is_raised_as_it_is():
    with pytest.raises(ConnectionResetError), handle_signals(TRAINER):
        raise ConnectionResetError("Connection lost")


def test_votes_are_one_hot_and_a_stop_outranks_a_requeue_and_sigint_outranks_sigterm():
    signals = RunSignals(signal.SIGUSR1)
    assert signals.handled == (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    assert signals.vote(torch.zeros(())).tolist() == [0, 0, 0]
    signals.received = signal.SIGTERM
    assert signals.vote(torch.zeros(())).tolist() == [0, 1, 0]
    assert signals.agree([0, 0, 0]) is None
    assert signals.agree([0, 1, 3]) == signal.SIGTERM
    assert signals.agree([1, 1, 0]) == signal.SIGINT


def test_a_stop_signal_after_the_warning_signal_replaces_it(in_slurm_job):
    with pytest.raises(SystemExit) as leaving, handle_signals(TRAINER) as signals:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # scancel after the warning
        assert signals.received == signal.SIGTERM
    assert leaving.value.code == 128 + signal.SIGTERM
