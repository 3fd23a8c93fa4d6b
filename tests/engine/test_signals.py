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


def test_in_a_slurm_job_the_warning_signal_is_handled_for_the_whole_job_and_exits_0(in_slurm_job):
    with handle_signals(TRAINER) as signals:
        os.kill(os.getpid(), signal.SIGUSR1)  # the default action would end the process
        assert signals.received == signal.SIGUSR1
        assert not stop_requested()  # a requeue, not a stop: export and test still run


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
