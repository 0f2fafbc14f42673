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
# A Python callable given to esvllm.train: named by its import path when it has one (any process can
# import it, so the run resumes from the command line too), else kept in this process only.
CALLABLE_PREFIX = "python:"
CALLABLES: dict[str, RewardFn] = {}


def register(name: str, fn: RewardFn) -> None:
    if name in REWARDS:
        raise ValueError(f"reward {name!r} is already registered")
    REWARDS[name] = fn


def resolve_reward(spec: str) -> RewardFn:
    """A registered name, or `package.module:function`; errors name the spec and the choices."""
    if spec in REWARDS:
        return REWARDS[spec]
    if spec in CALLABLES:
        return CALLABLES[spec]
    if spec.startswith(CALLABLE_PREFIX):
        raise ValueError(f"reward {spec!r} was a Python callable given to esvllm.train; it lives only in that "
                         f"process: resume with esvllm.train(resume=RUN_DIR, reward=<the function>)")
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


def spec_of_callable(fn: RewardFn) -> str:
    """The reward spec that names `fn`: `module:function` if importing that gives `fn`, else a name
    registered in this process (`python:<qualified name>`)."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module and module != "__main__" and "<" not in name:
        try:
            found = importlib.import_module(module)
            for part in name.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            found = None
        if found is fn:
            return f"{module}:{name}"
    spec = CALLABLE_PREFIX + (name or type(fn).__name__)
    CALLABLES[spec] = fn  # the latest callable of that name wins: a notebook redefines its reward
    return spec


def portable(spec: str):
    """What a spawned reward worker can turn back into the reward: the spec, or for a callable
    registered in this process, its cloudpickle bytes (our own process's object, not a file)."""
    if not spec.startswith(CALLABLE_PREFIX):
        return spec
    from ray import cloudpickle

    try:
        return cloudpickle.dumps(CALLABLES[spec])
    except Exception as exc:  # noqa: BLE001 - whatever stops pickling, say which reward and the way out
        raise ValueError(f"reward {spec!r} cannot be sent to reward worker processes (--reward_timeout) "
                         f"({type(exc).__name__}: {exc}); define it at module level or drop reward_timeout") from None


def from_portable(payload) -> RewardFn:
    if isinstance(payload, bytes):
        from ray import cloudpickle

        return cloudpickle.loads(payload)
    return resolve_reward(payload)


register("countdown", countdown_reward)
register("conciseness", conciseness_reward)
register("addition", addition_reward)
register("math", math_reward)
