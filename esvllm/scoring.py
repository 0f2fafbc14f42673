"""Scoring completions with the reward function, in this process or in killable worker processes.

Without a timeout, rewards run inline (fast, nothing to set up). With `--reward_timeout T`, each call
runs in a worker process; a call that exceeds T seconds is scored with the fallback and its worker is
killed and replaced. Members are then scored in background threads (`submit`), each with its own
pair of workers, so a stuck call holds up neither the other members' scoring nor the dispatch of
members to engines.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import queue
import statistics
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import wait


class NonFiniteReward(ValueError):
    """The reward function returned NaN or an infinity."""


def call_reward(fn, completion: str, sample: dict) -> tuple[float, dict]:
    """(reward, components) from a reward that returns a float or a dict with a `reward` key; a
    non-finite reward raises (it is scored like a reward that raised)."""
    out = fn(completion, sample)
    value, parts = (out["reward"], {k: float(v) for k, v in out.items() if k != "reward"}) if isinstance(out, dict) \
        else (out, {})
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteReward(f"the reward function returned {value} for completion {completion[:60]!r}")
    return value, parts


class Scorer:
    def __init__(self, reward_spec: str, fallback: float = 0.0, timeout: float | None = None,
                 workers: int = 2, concurrent_members: int = 3):
        from rewards import resolve_reward

        self.fallback = fallback
        self.fn = resolve_reward(reward_spec)
        self.pools: queue.Queue | None = None
        self.executor = None
        if timeout:
            self.pools = queue.Queue()
            for _ in range(concurrent_members):
                self.pools.put(RewardProcesses(reward_spec, workers, timeout))
            self.executor = ThreadPoolExecutor(concurrent_members, thread_name_prefix="reward")

    def submit(self, completions: list[str], samples: list[dict]) -> Future:
        """`score` in the background when rewards have a timeout; at once (a done future) otherwise."""
        if self.executor is None:
            future: Future = Future()
            future.set_result(self.score(completions, samples))
            return future
        return self.executor.submit(self.score, completions, samples)

    def score(self, completions: list[str], samples: list[dict]) -> dict:
        """Mean reward over the prompts of one member, component means, error and timeout counts."""
        started = time.perf_counter()
        if self.pools is not None:
            pool = self.pools.get()
            try:
                outcomes = pool.run(list(zip(completions, samples)))
            finally:
                self.pools.put(pool)
        else:
            outcomes = []
            for completion, sample in zip(completions, samples):
                try:
                    outcomes.append(("ok", call_reward(self.fn, completion, sample)))
                except Exception as exc:  # a user's reward may raise anything: count it, score the fallback
                    outcomes.append(("error", exc))
        values, components, per_sample, errors, timeouts, last_error = [], {}, [], 0, 0, None
        for status, payload in outcomes:
            parts = {}
            if status == "ok":
                value, parts = payload
                for key, v in parts.items():
                    components.setdefault(key, []).append(v)
            else:
                value = self.fallback
                errors += status == "error"
                timeouts += status == "timeout"
                last_error = payload if status == "error" else last_error
            values.append(value)
            per_sample.append({"status": status, **parts})
        return {"reward": statistics.fmean(values), "values": values, "per_sample": per_sample,
                "score_s": time.perf_counter() - started,
                "components": {k: statistics.fmean(v) for k, v in components.items()},
                "errors": errors, "timeouts": timeouts, "error": last_error}

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            while not self.pools.empty():
                self.pools.get().close()


def _serve(conn, reward) -> None:
    from rewards import from_portable

    fn = from_portable(reward)
    while True:
        item = conn.recv()
        if item is None:
            return
        try:
            conn.send(("ok", call_reward(fn, *item)))
        except Exception as exc:
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


class RewardProcesses:
    """A few reward worker processes; a call past the timeout kills and replaces its worker."""

    def __init__(self, reward_spec: str, workers: int, timeout: float):
        from rewards import portable

        self.spec, self.timeout = portable(reward_spec), timeout
        self.ctx = mp.get_context("spawn")  # never fork a process that runs Ray threads
        self.workers = [self._spawn() for _ in range(workers)]

    def _spawn(self):
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_serve, args=(child, self.spec), daemon=True)
        process.start()
        return process, parent

    def run(self, items: list[tuple]) -> list[tuple[str, object]]:
        results: list = [None] * len(items)
        queue, busy = deque(range(len(items))), {}  # worker index -> (item index, deadline)
        while queue or busy:
            for w in range(len(self.workers)):
                if w not in busy and queue:
                    i = queue.popleft()
                    self.workers[w][1].send(items[i])
                    busy[w] = (i, time.monotonic() + self.timeout)
            soonest = min(deadline for _, deadline in busy.values())
            ready = wait([self.workers[w][1] for w in busy], timeout=max(0.0, soonest - time.monotonic()))
            for w in list(busy):
                conn = self.workers[w][1]
                if conn in ready:
                    results[busy.pop(w)[0]] = conn.recv()
                elif time.monotonic() >= busy[w][1]:
                    results[busy.pop(w)[0]] = ("timeout", None)
                    self.workers[w][0].kill()
                    self.workers[w] = self._spawn()
        return results

    def close(self) -> None:
        for process, conn in self.workers:
            try:
                conn.send(None)
            except OSError:
                pass
            process.join(timeout=1)
            if process.is_alive():
                process.kill()


def mean_components(scored: list[dict]) -> dict:
    """Each reward component's mean over the members that report it."""
    keys = sorted({k for m in scored for k in m["components"]})
    return {k: statistics.fmean(m["components"][k] for m in scored if k in m["components"]) for k in keys}
