"""Reward functions by name, plus `module:function` for a user's own.

A reward is `fn(completion: str, sample: dict) -> float | dict`; a dict has a `reward` key and named
components, which are logged separately. Names are registered once; a duplicate is refused.
"""

from __future__ import annotations

import importlib
from typing import Callable

from rewards.addition import addition_reward
from rewards.conciseness import conciseness_reward
from rewards.countdown import countdown_reward
from rewards.math import math_reward

RewardFn = Callable[[str, dict], "float | dict"]
REWARDS: dict[str, RewardFn] = {}


def register(name: str, fn: RewardFn) -> None:
    if name in REWARDS:
        raise ValueError(f"reward {name!r} is already registered")
    REWARDS[name] = fn


def resolve_reward(spec: str) -> RewardFn:
    """A registered name, or `package.module:function`; errors name the spec and the choices."""
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown reward {spec!r}: use one of {sorted(REWARDS)} or 'module:function'")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: module {module_name!r} has no function {attr!r}")
    return fn


register("countdown", countdown_reward)
register("conciseness", conciseness_reward)
register("addition", addition_reward)
register("math", math_reward)
