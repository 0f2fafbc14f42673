"""The coordinator: the only loop. Dispatches members to engines, scores, updates, checks, logs.

One iteration (paper Algorithm 1):
  1. seeds s_1..s_N from (global_seed, iteration); the iteration's prompts (the same for every member);
  2. each member goes to the next free engine: perturb to base + sigma*eps(s_n), generate all prompts
     in one call; its completions are scored here while the engines keep generating;
  3. coefficients alpha/N * z_n from the member rewards (esvllm.es);
  4. every engine applies the same [(s_n, coeff_n)] (O(N) numbers, never weights);
  5. every --sync_check_every iterations all engines' checksums must agree.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections import deque

from esvllm.es import member_seeds, update_coefficients

logger = logging.getLogger(__name__)


class EnginesDisagree(RuntimeError):
    """Engines that should hold the same weights report different checksums."""


class RewardFailed(RuntimeError):
    """The reward function raised on every sample of an iteration."""


class Coordinator:
    def __init__(self, config, engines, train: list[dict], reward_fn, runlog=None, progress: bool = True):
        self.config = config
        self.engines = engines
        self.train = train
        self.reward_fn = reward_fn
        self.runlog = runlog
        self.progress = progress

    # ---- one iteration ----------------------------------------------------------------------------
    def batch(self, iteration: int) -> list[dict]:
        size = self.config.batch_size
        if size is None or size >= len(self.train):
            return self.train
        return random.Random(f"{self.config.global_seed}/{iteration}/batch").sample(self.train, size)

    def sampling(self, seed: int) -> dict:
        params = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        if self.config.temperature > 0:
            params["seed"] = seed  # reproducible sampling per member
        return params

    def step(self, iteration: int) -> dict:
        cfg = self.config
        started = time.perf_counter()
        seeds = member_seeds(cfg.global_seed, iteration, cfg.population_size)
        samples = self.batch(iteration)
        scored, timing = self.rollouts(iteration, seeds, samples)
        rewards = [m["reward"] for m in scored]
        coefficients = update_coefficients(rewards, cfg.alpha)
        pairs = list(zip(seeds, coefficients))

        t0 = time.perf_counter()
        refs = [e.submit("rpc", "apply_update", pairs) for e in self.engines]
        results = [e.wait(r) for e, r in zip(self.engines, refs)]
        timing["update_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        checksum = None
        if cfg.sync_check_every and (iteration + 1) % cfg.sync_check_every == 0:
            checksum = self.check_sync(iteration)
        timing["sync_s"] = time.perf_counter() - t0
        timing["iteration_s"] = time.perf_counter() - started

        tokens = sum(m["tokens"] for m in scored)
        components = _mean_components(scored)
        return {
            "iteration": iteration,
            "reward_mean": statistics.fmean(rewards),
            "reward_std": statistics.pstdev(rewards),
            "reward_min": min(rewards),
            "reward_max": max(rewards),
            "components": components,
            "time": timing,
            "tokens": tokens,
            "tokens_per_s": tokens / timing["rollout_s"] if timing["rollout_s"] > 0 else 0.0,
            "mean_completion_tokens": tokens / (len(scored) * len(samples)),
            "update_norm": results[0]["update_norm"],
            "reward_errors": sum(m["errors"] for m in scored),
            "seeds": seeds,
            "rewards": rewards,
            "coefficients": coefficients,
            "checksum": checksum,  # every engine's, when checked this iteration (they agreed)
        }

    def rollouts(self, iteration: int, seeds: list[int], samples: list[dict]):
        """Every member on the next free engine; scoring overlaps the other engines' generation."""
        import ray

        prompts = [s["prompt"] for s in samples]
        queue = deque(range(len(seeds)))
        pending = {}
        scored: list[dict | None] = [None] * len(seeds)
        timing = {"perturb_s": 0.0, "generate_s": 0.0, "score_s": 0.0}
        started = time.perf_counter()

        def submit(engine):
            member = queue.popleft()
            ref = engine.submit("rollout", seeds[member], self.config.sigma, prompts, self.sampling(seeds[member]))
            pending[ref] = (engine, member)

        for engine in self.engines:
            if queue:
                submit(engine)
        bar = _progress(len(seeds), f"iter {iteration}", self.progress)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            engine, member = pending.pop(ref)
            result = engine.wait(ref)
            if queue:
                submit(engine)  # before scoring: the engine must not wait on the coordinator
            t0 = time.perf_counter()
            scored[member] = self.score(result["completions"], samples)
            timing["score_s"] += time.perf_counter() - t0
            timing["perturb_s"] += result["perturb_s"]
            timing["generate_s"] += result["generate_s"]
            bar.update(1)
            bar.set_postfix(reward=f"{scored[member]['reward']:.3f}")
        bar.close()
        timing["rollout_s"] = time.perf_counter() - started
        if all(m["errors"] == len(samples) for m in scored):
            raise RewardFailed(f"iteration {iteration}: the reward raised on every sample") from scored[0]["error"]
        return scored, timing

    def score(self, completions: list[dict], samples: list[dict]) -> dict:
        """Mean reward of one member over its prompts; a raising reward scores the fallback."""
        values, components, errors, last_error = [], {}, 0, None
        for completion, sample in zip(completions, samples):
            try:
                out = self.reward_fn(completion["text"], sample)
                value = float(out["reward"] if isinstance(out, dict) else out)
                if isinstance(out, dict):
                    for key, v in out.items():
                        if key != "reward":
                            components.setdefault(key, []).append(float(v))
            except Exception as exc:  # a user's reward may raise anything; count it, score the fallback
                errors, last_error = errors + 1, exc
                value = self.config.reward_fallback
            values.append(value)
        return {
            "reward": statistics.fmean(values),
            "components": {k: statistics.fmean(v) for k, v in components.items()},
            "tokens": sum(c["tokens"] for c in completions),
            "errors": errors,
            "error": last_error,
        }

    def check_sync(self, iteration: int) -> str:
        refs = [e.submit("rpc", "checksum") for e in self.engines]
        sums = [e.wait(r) for e, r in zip(self.engines, refs)]
        if len(set(sums)) > 1:
            detail = ", ".join(f"{e}: {s}" for e, s in zip(self.engines, sums))
            raise EnginesDisagree(f"after iteration {iteration} the engines hold different weights: {detail}")
        return sums[0]

    # ---- the run ----------------------------------------------------------------------------------
    def run(self, start: int = 0) -> list[dict]:
        records = []
        for iteration in range(start, self.config.num_iterations):
            record = self.step(iteration)
            records.append(record)
            if self.runlog:
                self.runlog.log(record)
            _print_summary(record, self.config.num_iterations, self.progress)
        return records


def _mean_components(scored: list[dict]) -> dict:
    keys = sorted({k for m in scored for k in m["components"]})
    return {k: statistics.fmean(m["components"][k] for m in scored if k in m["components"]) for k in keys}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="member", leave=False, disable=not enabled, dynamic_ncols=True)


def _print_summary(r: dict, total: int, enabled: bool) -> None:
    comps = " ".join(f"{k}={v:.3f}" for k, v in r["components"].items())
    line = (f"iter {r['iteration'] + 1}/{total} reward {r['reward_mean']:.4f} ± {r['reward_std']:.4f} "
            f"[{r['reward_min']:.3f}, {r['reward_max']:.3f}] {comps} | {r['time']['iteration_s']:.1f}s "
            f"{r['tokens_per_s']:.0f} tok/s | update norm {r['update_norm']:.3g}")
    if enabled:
        from tqdm import tqdm

        tqdm.write(line)
    else:
        logger.info(line)
