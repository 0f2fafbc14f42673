"""User-style rewards for tests, loaded through `module:function` (also inside reward worker processes)."""

import os
import time


def hangs_on_one_prompt(completion: str, sample: dict) -> float:
    """Conciseness, except that the prompt named by $ESVLLM_TEST_HANG_PROMPT never returns."""
    if sample["prompt"] == os.environ.get("ESVLLM_TEST_HANG_PROMPT"):
        time.sleep(3600)
    return -abs(len(completion.strip()) - len(sample["target"]))


def always_raises(completion: str, sample: dict) -> float:
    raise RuntimeError("broken reward")
