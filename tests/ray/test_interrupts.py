"""Interrupted the way terminals and schedulers interrupt: SIGINT (Ctrl-C) and SIGTERM (Slurm's
scancel, preemption, Kubernetes, `timeout`) sent to the whole process group of `python -m esvllm.run`
at each stage of a run, one of the two at each. The run says in one line what resume will use, leaves
no traceback and no process behind, and the `--resume` command it prints ends bit-identical to an
uninterrupted run.

Fake engines (engines.fake: the real ES state in Ray actors) hold at the chosen call
(ESVLLM_FAKE_HOLD) until the signal has landed, so each stage is hit deterministically."""

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from esvllm.checkpoint import usable_checkpoint
from esvllm.run import main
from esvllm.runlog import read_metrics

from tests.helpers import FAKE, final_weights, run, same_weights, terminal_signals, without_timing


RUN = [*FAKE, "--num_iterations", "4", "--save_every", "1", "--eval_every", "2"]
# Engine 0's calls: its first generate is the held-out evaluation of the base model, its third a
# member's rollout of iteration 0; the first export writes the checkpoint after iteration 0.
STAGES = {
    "engines_starting": "init:1",
    "evaluation": "generate:1",
    "generation": "generate:3",
    "update": "apply_update:2",
    "checkpoint_write": "export:1",
}


# Every stage once, each signal at two or three of them. SIGTERM becomes the same KeyboardInterrupt in
# the driver (esvllm.run) as SIGINT, so what a stage tests (the state the driver saves and names) does
# not depend on which signal came; what differs is that Ray's and the engines' processes in the group
# die with SIGTERM (mid-generation on real vLLM engines too: tests/engine/test_failures.py).
CASES = [("engines_starting", signal.SIGTERM), ("evaluation", signal.SIGINT), ("generation", signal.SIGTERM),
         ("update", signal.SIGINT), ("checkpoint_write", signal.SIGTERM)]


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory):
    return run(tmp_path_factory.mktemp("plain"), "ref", base=RUN)


def group_processes(pgid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            pass
    return found


@pytest.mark.parametrize("stage, signum", CASES, ids=[f"{stage}-{signal.Signals(s).name}" for stage, s in CASES])
def test_an_interrupt_at_each_stage_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path, stage, signum):
    marker = tmp_path / "held"
    env = {**os.environ, "ESVLLM_FAKE_HOLD": f"0:{STAGES[stage]}:{marker}"}
    output_dir = tmp_path / "runs"
    process = subprocess.Popen([sys.executable, "-m", "esvllm.run", *RUN, "--output_dir", str(output_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True, preexec_fn=terminal_signals)  # as a shell job or a batch step
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.1)
    os.killpg(process.pid, signum)  # the whole group: driver, Ray and the engines
    signalled = time.monotonic()
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    assert time.monotonic() - signalled < 10, output[-3000:]  # within a scheduler's grace period
    assert "Traceback" not in output, output[-3000:]
    hint = re.search(r"--resume (\S+) (?:replays the update log and )?continues at iteration (\d+)", output)
    assert hint, output[-3000:]
    while group_processes(process.pid) and time.monotonic() < signalled + 30:
        time.sleep(0.2)
    assert not group_processes(process.pid), [" ".join(p.cmdline())[:80] for p in group_processes(process.pid)]
    run_dir, continues_at = hint.group(1), int(hint.group(2))
    assert continues_at == len(read_metrics(run_dir))
    named = re.search(r"interrupted: checkpoint (\S+);", output)
    if named:  # the checkpoint the line names is the one resume takes
        assert named.group(1) == str(usable_checkpoint(run_dir))
    resumed = main(["--resume", run_dir])
    assert without_timing(read_metrics(resumed)) == without_timing(read_metrics(uninterrupted))
    assert same_weights(final_weights(resumed), final_weights(uninterrupted))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_while_the_data_is_read_says_nothing_was_saved(tmp_path, signum):
    """Before any engine: the run is reading its --data, a FIFO that the test holds open and empty."""
    data = tmp_path / "rows.jsonl"
    os.mkfifo(data)
    output_dir = tmp_path / "runs"
    process = subprocess.Popen([sys.executable, "-m", "esvllm.run", *RUN, "--data", str(data), "--output_dir",
                                str(output_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, preexec_fn=terminal_signals)
    deadline = time.monotonic() + 120
    while True:  # a writer can open the FIFO once the run has opened it for reading
        try:
            writer = os.open(data, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
            time.sleep(0.05)
    try:
        os.killpg(process.pid, signum)
        signalled = time.monotonic()
        output, _ = process.communicate(timeout=60)
    finally:
        os.close(writer)
    assert process.returncode == 130 and time.monotonic() - signalled < 10, output[-3000:]
    assert "interrupted before the run started: nothing was saved" in output and "Traceback" not in output, output
    assert not output_dir.exists() or not any(output_dir.iterdir())  # no run directory, nothing written
    assert not group_processes(process.pid)
