"""The coordinator: the only loop. Dispatches members to engines, scores, updates, checks, logs.

One iteration (paper Algorithm 1):
  1. seeds s_1..s_N from (global_seed, iteration); the iteration's prompts (the same for every member);
  2. each member goes to the next free engine: perturb to base + sigma*eps(s_n), generate all prompts
     in one call; its completions are scored here while the engines keep generating;
  3. coefficients alpha/N * z_n from the member rewards (esvllm.es);
  4. every engine applies the same [(s_n, coeff_n)] (O(N) numbers, never weights);
  5. every --sync_check_every iterations all engines' checksums must agree.

An engine that dies mid-iteration is replaced: its member goes back in the queue, a new engine starts
from the latest exported weights and replays the update log since, and must then report the same
base checksum as the others. Checkpoints (esvllm.checkpoint) hold everything needed to resume.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections import deque
from pathlib import Path

from engines.pool import EngineDiedError
from esvllm import checkpoint
from esvllm.es import member_seeds, update_coefficients

logger = logging.getLogger(__name__)

# Members queued per engine: the next one starts the moment the last finishes, without waiting for
# the coordinator's round trip; small, so a slow engine holds back at most one extra member.
PIPELINE_DEPTH = 2


class EnginesDisagree(RuntimeError):
    """Engines that should hold the same weights report different checksums."""


class RewardFailed(RuntimeError):
    """The reward function raised on every sample of an iteration."""


class NoEngineLeft(RuntimeError):
    """Every engine died and none could be started again."""


class Coordinator:
    def __init__(self, config, pool, train: list[dict], scorer, runlog=None, progress: bool = True,
                 test: list[dict] | None = None, run_dir: Path | None = None, records: list[dict] | None = None,
                 weights: tuple[str, int] | None = None):
        self.config = config
        self.pool = pool
        self.train = train
        self.test = test or []
        self.scorer = scorer
        self.runlog = runlog
        self.progress = progress
        self.run_dir = Path(run_dir) if run_dir else None
        self.records = list(records or [])
        # Every update the engines hold, in order: what a replacement engine replays.
        self.updates = [list(zip(r["seeds"], r["coefficients"])) for r in self.records]
        # The weights engines start from, and how many logged iterations they already include.
        self.weights_path, self.weights_iteration = weights or (pool.model_path, 0)
        self.spawn_error: Exception | None = None
        self.extra_sampling: dict = {}  # e.g. {"ignore_eos": True} for fixed-length benchmarks
        self.restarts_between = 0  # engines replaced outside rollouts, counted in the next record
        self.best_eval = max((r["eval"]["reward"] for r in self.records if "eval" in r), default=None)

    @property
    def engines(self):
        return self.pool.engines

    # ---- one iteration ----------------------------------------------------------------------------
    def batch(self, iteration: int) -> list[dict]:
        size = self.config.batch_size
        if size is None or size >= len(self.train):
            return self.train
        return random.Random(f"{self.config.global_seed}/{iteration}/batch").sample(self.train, size)

    def sampling(self, seed: int) -> dict:
        params = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens,
                  **self.extra_sampling}
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

        t0 = time.perf_counter()
        pairs = list(zip(seeds, coefficients))
        results = self.broadcast("apply_update", pairs)
        self.updates.append(pairs)
        timing["update_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        checksum = None
        if cfg.sync_check_every and (iteration + 1) % cfg.sync_check_every == 0:
            checksum = self.check_sync(iteration)
        timing["sync_s"] = time.perf_counter() - t0
        timing["iteration_s"] = time.perf_counter() - started

        tokens = sum(m["tokens"] for m in scored)
        return {
            "iteration": iteration,
            "reward_mean": statistics.fmean(rewards),
            "reward_std": statistics.pstdev(rewards),
            "reward_min": min(rewards),
            "reward_max": max(rewards),
            "components": _mean_components(scored),
            "time": timing,
            "tokens": tokens,
            "tokens_per_s": tokens / timing["rollout_s"] if timing["rollout_s"] > 0 else 0.0,
            "mean_completion_tokens": tokens / (len(scored) * len(samples)),
            "update_norm": results[0]["update_norm"],
            "reward_errors": sum(m["errors"] for m in scored),
            "reward_timeouts": sum(m["timeouts"] for m in scored),
            "engine_restarts": timing.pop("engine_restarts"),
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
        pending: dict = {}  # ObjectRef -> (engine, member or None while the engine starts)
        scored: list[dict | None] = [None] * len(seeds)
        timing = {"perturb_s": 0.0, "generate_s": 0.0, "score_s": 0.0, "engine_restarts": self.restarts_between}
        self.restarts_between = 0
        started = time.perf_counter()

        def submit(engine):
            member = queue.popleft()
            ref = engine.submit("rollout", seeds[member], self.config.sigma, prompts, self.sampling(seeds[member]))
            pending[ref] = (engine, member)

        for engine in list(self.engines):
            for _ in range(PIPELINE_DEPTH):
                if queue:
                    submit(engine)
        bar = _progress(len(seeds), f"iter {iteration + 1}", self.progress)
        scoring: dict = {}  # member -> Future of its score (background only with --reward_timeout)

        def collect(block: bool) -> None:
            for member in [m for m, f in scoring.items() if block or f.done()]:
                scored[member] = scoring.pop(member).result()
                scored[member]["tokens"] = tokens[member]
                timing["score_s"] += scored[member]["score_s"]
                bar.update(1)
                bar.set_postfix(reward=f"{scored[member]['reward']:.3f}")

        tokens: dict = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.05 if scoring else None)
            collect(block=False)
            if not ready:
                continue
            ref = ready[0]
            engine, member = pending.pop(ref)
            try:
                result = engine.wait(ref)
            except EngineDiedError as exc:
                if member is None:  # a replacement could not start: no second try
                    logger.error("replacement %s failed to start: %s", engine, exc)
                    if not pending:
                        self.stop_if_no_engine(exc)
                    continue
                queue.appendleft(member)
                if engine in self.engines:  # its other queued call fails too: replace it once
                    logger.warning("%s; its members go back in the queue and a new engine starts", exc)
                    replacement = self.replace(engine)
                    timing["engine_restarts"] += 1
                    if replacement is not None:
                        pending[replacement.ready_ref] = (replacement, None)
                if not pending:
                    self.stop_if_no_engine(exc)
                    for engine in self.engines:  # engines left, none busy: hand them the queue
                        for _ in range(PIPELINE_DEPTH):
                            if queue:
                                submit(engine)
                continue
            if member is None:  # a replacement engine is up: bring it to the current weights
                self.catch_up(engine, result)
                for _ in range(PIPELINE_DEPTH):
                    if queue:
                        submit(engine)
                continue
            if queue:
                submit(engine)  # refill before scoring: the engine must not wait on the coordinator
            tokens[member] = sum(c["tokens"] for c in result["completions"])
            scoring[member] = self.scorer.submit([c["text"] for c in result["completions"]], samples)
            timing["perturb_s"] += result["perturb_s"]
            timing["generate_s"] += result["generate_s"]
        collect(block=True)
        bar.close()
        timing["rollout_s"] = time.perf_counter() - started
        if all(m["errors"] == len(samples) for m in scored):
            raise RewardFailed(f"iteration {iteration}: the reward raised on every sample") from scored[0]["error"]
        return scored, timing

    def broadcast(self, method: str, *args) -> list:
        """The same RPC on every engine; an engine that died meanwhile is replaced and asked again."""
        calls = [(e, e.submit("rpc", method, *args)) for e in self.engines]
        results = []
        for engine, ref in calls:
            try:
                results.append(engine.wait(ref))
            except EngineDiedError as exc:
                logger.warning("%s during %s; starting a new engine", exc, method)
                replacement = self.replace(engine)
                self.restarts_between += 1
                try:
                    if replacement is None:
                        raise EngineDiedError(f"no replacement for {engine}: {self.spawn_error}")
                    info = replacement.wait(replacement.ready_ref)
                except EngineDiedError as failed:
                    self.stop_if_no_engine(failed)
                    continue
                self.catch_up(replacement, info, verify=False)
                results.append(replacement.call("rpc", method, *args))
        return results

    def check_sync(self, iteration: int, base_only: bool = False) -> str:
        sums = self.broadcast("checksum", base_only)
        if len(set(sums)) > 1:
            detail = ", ".join(f"{e}: {s}" for e, s in zip(self.engines, sums))
            raise EnginesDisagree(f"after iteration {iteration} the engines hold different weights: {detail}")
        return sums[0]

    # ---- engine failures --------------------------------------------------------------------------
    def replace(self, dead):
        """Drop a dead engine and start a new one in its place from the latest exported weights;
        None when even creating it fails (the caller then stops if no engine is left)."""
        self.pool.engines = [e for e in self.engines if e is not dead]
        try:
            return self.spawn_replacement(dead.index)
        except Exception as exc:  # whatever stops a new engine, the run must end cleanly
            logger.error("cannot start a replacement for %s: %s", dead, exc)
            self.spawn_error = exc
            return None

    def spawn_replacement(self, index: int):
        return self.pool.spawn(index, self.weights_path)

    def stop_if_no_engine(self, error: Exception) -> None:
        """With no engine left, save what is known (the update log since the last export) and stop."""
        if self.engines:
            return
        path = self.save(with_weights=False)
        raise NoEngineLeft(f"after iteration {len(self.records) - 1} every engine died and none could be "
                           f"started again ({error}); checkpoint saved: {path}") from error

    def catch_up(self, engine, info: dict, verify: bool = True) -> None:
        """Replay the update log since the exported weights, then require the others' base checksum
        (`verify=False` mid-broadcast, where the sync check that follows compares them)."""
        engine.info = info
        for pairs in self.updates[self.weights_iteration :]:
            engine.apply_update(pairs)
        reference = [e for e in self.engines if e is not engine]
        if reference and verify:
            want, got = reference[0].checksum(base_only=True), engine.checksum(base_only=True)
            if want != got:
                raise EnginesDisagree(f"replacement {engine} has base checksum {got}, the others {want}")
        self.pool.engines = sorted([*self.engines, engine], key=lambda e: e.index)
        logger.warning("%s replaced the dead engine and caught up on %d updates", engine,
                       len(self.updates) - self.weights_iteration)

    # ---- evaluation and checkpoints ---------------------------------------------------------------
    def evaluate(self) -> dict:
        from esvllm.evaluation import evaluate_on_engines

        summary, _rows = evaluate_on_engines(self.engines, self.test, self.scorer, self.config.max_tokens)
        return summary

    def state(self, next_iteration: int) -> dict:
        return {
            "iteration": next_iteration,
            "updates": [[r["seeds"], r["coefficients"]] for r in self.records],
            "metrics": self.records,
            "config": self.config.to_dict(),
            "model_path": self.weights_path,
            "model_iteration": self.weights_iteration,
        }

    def save(self, with_weights: bool = True) -> Path | None:
        """Checkpoint after the last completed iteration; without weights if no engine can export."""
        if self.run_dir is None:
            return None
        engines = self.engines if with_weights else []
        export = engines[0].export if engines else None
        path = checkpoint.save_checkpoint(self.run_dir, self.state(len(self.records)), export,
                                          keep=self.config.keep_checkpoints)
        if export is not None:
            state = checkpoint.load_state(path)
            self.weights_path = checkpoint.model_path(self.run_dir, state)
            self.weights_iteration = state["model_iteration"]
        return path

    # ---- the run ----------------------------------------------------------------------------------
    def run(self, start: int = 0) -> list[dict]:
        cfg = self.config
        for iteration in range(start, cfg.num_iterations):
            record = self.step(iteration)
            if cfg.eval_every and (iteration + 1) % cfg.eval_every == 0:
                record["eval"] = self.evaluate()
                if cfg.save_best and (self.best_eval is None or record["eval"]["reward"] > self.best_eval):
                    self.best_eval = record["eval"]["reward"]
                    self.engines[0].export(str(self.run_dir / "best"))
            self.records.append(record)
            if self.runlog:
                self.runlog.log(record)
            _print_summary(record, cfg.num_iterations, self.progress)
            if cfg.save_every and (iteration + 1) % cfg.save_every == 0 and iteration + 1 < cfg.num_iterations:
                try:
                    self.save()
                except OSError as exc:  # e.g. disk full: earlier checkpoints stay valid; keep training
                    logger.error("checkpoint after iteration %d not saved (%s); earlier checkpoints are intact",
                                 iteration, exc)
        return self.records


def _mean_components(scored: list[dict]) -> dict:
    keys = sorted({k for m in scored for k in m["components"]})
    return {k: statistics.fmean(m["components"][k] for m in scored if k in m["components"]) for k in keys}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="member", leave=False, disable=not enabled, dynamic_ncols=True)


def _print_summary(r: dict, total: int, enabled: bool) -> None:
    comps = " ".join(f"{k}={v:.3f}" for k, v in r["components"].items())
    evals = " | eval " + " ".join(f"{k}={v:.3f}" for k, v in r["eval"].items() if v is not None) if "eval" in r else ""
    line = (f"iter {r['iteration'] + 1}/{total} reward {r['reward_mean']:.4f} ± {r['reward_std']:.4f} "
            f"[{r['reward_min']:.3f}, {r['reward_max']:.3f}] {comps} | {r['time']['iteration_s']:.1f}s "
            f"{r['tokens_per_s']:.0f} tok/s | update norm {r['update_norm']:.3g}{evals}")
    if enabled:
        from tqdm import tqdm

        tqdm.write(line)
    else:
        logger.info(line)
