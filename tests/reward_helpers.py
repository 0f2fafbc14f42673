"""User-style rewards for tests, loaded through `module:function` (also inside reward worker processes)."""

import itertools
import os
import threading
import time

from rewards.conciseness import conciseness_reward

# Set by tests.test_failures right after it has ray.kill()ed an engine.
ENGINE_KILLED = threading.Event()


def conciseness_once_an_engine_is_killed(completion: str, sample: dict) -> float:
    """Conciseness, but no iteration can finish before the test has killed an engine.

    So the kill always lands mid-run, however fast the run is (runs the reward inline, in the test's
    own process, where the event lives).
    """
    if not ENGINE_KILLED.wait(timeout=240):
        raise TimeoutError("no engine was killed within 240 s")
    return conciseness_reward(completion, sample)


SCORED = itertools.count(1)


def conciseness_then_hold(completion: str, sample: dict) -> float:
    """Conciseness; in a run whose environment sets ESVLLM_TEST_HOLD_AFTER=K, every call after the
    K-th waits an hour, so a test interrupts that run mid-iteration however fast it is (the reward
    runs inline, in the run's own process; a resume in the test's process scores as conciseness)."""
    limit = os.environ.get("ESVLLM_TEST_HOLD_AFTER")
    if limit and next(SCORED) > int(limit):
        time.sleep(3600)
    return conciseness_reward(completion, sample)


def hangs_on_one_prompt(completion: str, sample: dict) -> float:
    """Conciseness, except that the prompt named by $ESVLLM_TEST_HANG_PROMPT never returns."""
    if sample["prompt"] == os.environ.get("ESVLLM_TEST_HANG_PROMPT"):
        time.sleep(3600)
    return conciseness_reward(completion, sample)


def always_raises(completion: str, sample: dict) -> float:
    raise RuntimeError("broken reward")


def nan_for_long_completions(completion: str, sample: dict) -> float:
    """Conciseness, but NaN for completions longer than 6 characters (a user's buggy reward)."""
    return float("nan") if len(completion) > 6 else conciseness_reward(completion, sample)


def always_nan(completion: str, sample: dict) -> float:
    return float("nan")


def always_inf(completion: str, sample: dict) -> float:
    return float("inf")
