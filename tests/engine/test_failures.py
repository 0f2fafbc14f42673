"""Runs on real vLLM engines survive what goes wrong: a killed coordinator, a dead engine, a hung
reward, SIGTERM, bad disks.

Each disturbed run is compared with the undisturbed run of the same arguments (tests/engine/test_training.py).
The other engine-death cases run on fake engines in tests/test_recovery.py.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import psutil

from esvllm.run import main
from esvllm.runlog import read_metrics

from tests.helpers import ARGS, final_weights, same_weights, terminal_signals, without_timing


# A reward that holds the first iteration until the engine is dead, so the kill always lands mid-run.
KILL_REWARD = ["--reward", "tests.reward_helpers:conciseness_once_an_engine_is_killed"]


# A run of ARGS scores 4 members x 6 samples an iteration: holding after 24 * k calls stops it in
# the middle of iteration k + 1, so a kill or a signal always lands mid-run.
HOLD_REWARD = ["--reward", "tests.reward_helpers:conciseness_then_hold"]


def start_run(output_dir, *extra, hold_after_iterations=None, **popen):
    """The training command in its own process (so it can be killed like a real run)."""
    cmd = [sys.executable, "-m", "esvllm.run", *ARGS, "--output_dir", str(output_dir), *extra]
    env = dict(os.environ)
    if hold_after_iterations is not None:
        cmd += HOLD_REWARD
        env["ESVLLM_TEST_HOLD_AFTER"] = str(24 * hold_after_iterations)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **popen)


def wait_for_iterations(output_dir, count, process=None, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list(output_dir.glob("*/metrics.jsonl"))
        if runs and len(runs[0].read_text().splitlines()) >= count:
            return runs[0].parent
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended early:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("the run did not reach the iteration in time")


def descendants(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigterm_to_the_process_group_resumes_bit_identical_and_leaves_no_process(first_run, tmp_path):
    """A scheduler's SIGTERM to the whole group (Ray's and vLLM's processes included) on real vLLM
    engines mid-run, and the resume from its checkpoint on real engines; tests/ray/test_interrupts.py
    covers SIGINT and SIGTERM at every stage on fake engines, and tests/ray/test_failures_fake.py a
    SIGKILL (no handler runs) and its resume."""
    signum = signal.SIGTERM
    process = start_run(tmp_path, "--save_every", "1", hold_after_iterations=1, start_new_session=True,
                        preexec_fn=terminal_signals)
    run_dir = wait_for_iterations(tmp_path, 1, process)
    children = descendants(process.pid)
    assert any("raylet" in " ".join(c.cmdline()) for c in children if c.is_running())
    os.killpg(process.pid, signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-2000:]
    assert "Traceback" not in output and f"--resume {run_dir} continues at iteration" in output, output[-2000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
        time.sleep(0.5)
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, [" ".join(c.cmdline())[:100] for c in left]
    resumed = main(["--resume", str(run_dir)])
    assert [r["iteration"] for r in read_metrics(resumed)] == [0, 1, 2]  # each iteration exactly once
    assert without_timing(read_metrics(resumed)) == [
        {k: v for k, v in r.items() if k != "eval"} for r in without_timing(read_metrics(first_run))
    ]
    assert same_weights(final_weights(resumed), final_weights(first_run))


def test_a_killed_engine_is_replaced_and_the_result_is_unchanged(first_run, tmp_path, ray_session):
    killer = kill_engine_when_training_starts(tmp_path / "k", 1)
    run_dir = main(ARGS + KILL_REWARD + ["--output_dir", str(tmp_path / "k")])
    killer.join(timeout=5)
    records = read_metrics(run_dir)
    assert sum(r["engine_restarts"] for r in records) == 1
    assert all(r["checksum"] for r in records)  # the replacement agreed with engine 0 after every iteration
    expected = [{k: v for k, v in r.items() if k != "eval"} for r in without_timing(read_metrics(first_run))]
    assert without_timing(records) == expected
    assert same_weights(final_weights(run_dir), final_weights(first_run))


def kill_engine_when_training_starts(output_dir, index):
    """A thread that ray.kill()s engine `index` of this run as soon as its engines are up.

    The actor is named in the run's engines.json: other engines alive in the same Ray session (the
    session-wide test engines) must not be the ones killed.
    """
    import json

    import ray

    from tests.reward_helpers import ENGINE_KILLED

    ENGINE_KILLED.clear()

    def kill():
        deadline = time.monotonic() + 240
        while not list(output_dir.glob("*/engines.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        [listing] = output_dir.glob("*/engines.json")
        engines = json.loads(listing.read_text())
        ray.kill(ray.get_actor(engines[index]["actor_name"]))
        ENGINE_KILLED.set()  # the run's rewards (KILL_REWARD) wait for this

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


