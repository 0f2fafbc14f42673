"""The coordinator: ask -> evaluate -> tell, once per iteration, then logs and checkpoints.

One iteration (paper Algorithm 1):
  1. ask: seeds s_1..s_N from (global_seed, iteration), and the iteration's prompts (the same for
     every member);
  2. evaluate: each member runs on the next free engine of the fleet (perturb to base + sigma*eps,
     generate all prompts in one call); its completions are scored here while the engines go on;
  3. tell: coefficients alpha/N * f_n from the shaped member rewards (esvllm.es), appended to the
     update log and applied by every engine (O(N) numbers, never weights);
  4. every --sync_check_every iterations all engines' checksums must agree.

Who runs which member, and what happens when an engine dies, is the fleet's job (engines.fleet).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

from engines.fleet import EnginesDisagree, NoEngineLeft
from engines.variant import Variant
from esvllm import checkpoint
from esvllm.es import ask, optimizer_settings, scheduled, tell
from esvllm.eval import first_set
from esvllm.runlog import eval_line, iteration_record, progress_bar, say, summary_line

logger = logging.getLogger(__name__)


class RewardFailed(RuntimeError):
    """The reward function failed on every sample of an iteration."""


class Coordinator:
    def __init__(self, config, fleet, train: list[dict], scorer, runlog=None, evaluator=None,
                 run_dir: Path | None = None, records: list[dict] | None = None, progress: bool = True,
                 sampling_overrides: dict | None = None):
        self.config = config
        self.variant = Variant.from_config(config)
        self.fleet = fleet
        self.train = train
        self.scorer = scorer
        self.runlog = runlog
        self.evaluator = evaluator
        self.run_dir = Path(run_dir) if run_dir else None
        self.records = list(records or [])
        self.progress = progress
        self.sampling_overrides = dict(sampling_overrides or {})  # e.g. {"ignore_eos": True} for benchmarks
        self.best_eval = max((first_set(r["eval"])["reward"] for r in self.records if "eval" in r), default=None)
        self.restarts_counted = 0  # replacements already in a record (later ones, even between iterations, go in the next)

    # ---- the run ----------------------------------------------------------------------------------
    def run(self, start: int = 0) -> list[dict]:
        cfg = self.config
        try:
            if start == 0 and self.evaluator is not None and cfg.eval_every:
                self.evaluate(0)  # the base model, before any update
            for iteration in range(start, cfg.num_iterations):
                record = self.step(iteration)
                if self.evaluator is not None and cfg.eval_every and (iteration + 1) % cfg.eval_every == 0:
                    record["eval"] = self.evaluate(iteration + 1)
                self.records.append(record)
                if self.runlog:
                    self.runlog.log(record)
                self.fleet.log.commit()  # the iteration is durable from here on
                say(self.progress, summary_line(record, cfg.num_iterations))
                if cfg.save_every and (iteration + 1) % cfg.save_every == 0 and iteration + 1 < cfg.num_iterations:
                    try:
                        self.save()
                    except OSError as exc:  # e.g. disk full: earlier checkpoints stay valid; keep training
                        logger.error("checkpoint after iteration %d not saved (%s); earlier checkpoints are intact",
                                     iteration, exc)
        except NoEngineLeft as exc:
            path = self.save(with_weights=False)
            raise NoEngineLeft(f"{exc}; {self.fleet.log.committed} iterations done, checkpoint saved: {path}") from exc
        except RewardFailed as exc:
            path = self.save()
            raise RewardFailed(f"{exc} (first error: {exc.__cause__!r}); {self.fleet.log.committed} iterations "
                               f"done, checkpoint saved: {path}") from exc.__cause__
        except EnginesDisagree as exc:
            # No engine's weights are trusted now: the checkpoint holds the last exported weights and
            # the update log up to the last committed iteration, which replays on any correct engine.
            path = self.save(with_weights=False)
            where = f"{self.run_dir}/engines.json" if self.run_dir else "engines.json"
            raise EnginesDisagree(
                f"{exc}. The engines computed different weights from the same update; see {where} for each "
                f"engine's kernel level and CPU. Checkpoint of the last state they agreed on: {path} "
                f"({self.fleet.log.committed} iterations); continue with --resume {self.run_dir}") from None
        return self.records

    def step(self, iteration: int) -> dict:
        cfg = self.config
        started = time.perf_counter()
        sigma, alpha = self.schedules(iteration)
        seeds = ask(cfg.global_seed, iteration, cfg.population_size, cfg.antithetic)
        samples = self.batch(iteration)
        scored, timing = self.rollouts(iteration, seeds, samples, sigma)  # evaluate
        rewards = [m["reward"] for m in scored]
        pairs, options = tell(rewards, seeds, alpha, shaping=cfg.shaping, antithetic=cfg.antithetic,
                              optimizer=cfg.optimizer, step=iteration + 1, weight_decay=cfg.weight_decay,
                              hyper=optimizer_settings(cfg))
        options = self.variant.update_options(options)

        t0 = time.perf_counter()
        results = self.fleet.apply_update(pairs, options)
        timing["update_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        checksum = None
        if cfg.sync_check_every and (iteration + 1) % cfg.sync_check_every == 0:
            checksum = self.fleet.check_sync(iteration)
        timing["sync_s"] = time.perf_counter() - t0
        timing["iteration_s"] = time.perf_counter() - started

        restarts, self.restarts_counted = self.fleet.restarts - self.restarts_counted, self.fleet.restarts
        return iteration_record(iteration, scored, len(samples), timing, seeds=seeds, sigma=sigma, alpha=alpha,
                                coefficients=[c for _, c in pairs],
                                update_norm=next(r["update_norm"] for r in results if r), engine_restarts=restarts,
                                engines=len(self.fleet.engines),
                                checksum=checksum and checksum["served"], master_checksum=checksum and checksum["master"])

    def batch(self, iteration: int) -> list[dict]:
        size = self.config.batch_size
        if size is None or size >= len(self.train):
            return self.train
        return random.Random(f"{self.config.global_seed}/{iteration}/batch").sample(self.train, size)

    def sampling(self, seed: int) -> dict:
        params = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens,
                  **self.sampling_overrides}
        if self.config.temperature > 0:
            params["seed"] = seed  # reproducible sampling per member
        return params

    def schedules(self, iteration: int) -> tuple[float, float]:
        cfg = self.config
        return (scheduled(cfg.sigma_schedule, cfg.sigma, cfg.sigma_final or cfg.sigma / 10, iteration, cfg.num_iterations),
                scheduled(cfg.alpha_schedule, cfg.alpha, cfg.alpha_final or cfg.alpha / 10, iteration, cfg.num_iterations))

    def rollouts(self, iteration: int, seeds: list[int], samples: list[dict], sigma: float):
        """Every member on the fleet (a job per member, or per antithetic pair); scoring overlaps
        the other engines' generation."""
        prompts = [s["prompt"] for s in samples]
        jobs, depth = self.variant.jobs(seeds, sigma, prompts, self.sampling, len(self.fleet.engines))
        members = self.variant.seeds_per_member(seeds)
        scored: list[dict | None] = [None] * len(members)
        scoring: dict = {}  # member -> Future of its score (background only with --reward_timeout)
        tokens: dict = {}
        timing = {"perturb_s": 0.0, "generate_s": 0.0, "score_s": 0.0}
        bar = progress_bar(len(members), f"iter {iteration + 1}", self.progress)
        started = time.perf_counter()

        def on_result(job: int, result: dict) -> None:
            for k, one in enumerate(result["members"]):
                member = jobs[job].first_member + k
                tokens[member] = sum(c["tokens"] for c in one["completions"])
                scoring[member] = self.scorer.submit([c["text"] for c in one["completions"]], samples)
                timing["perturb_s"] += one["perturb_s"]
                timing["generate_s"] += one["generate_s"]

        def collect(block: bool = False) -> None:
            for member in [m for m, f in scoring.items() if block or f.done()]:
                scored[member] = {**scoring.pop(member).result(), "tokens": tokens[member]}
                if scored[member]["errors"]:
                    logger.warning("member %d (seed %d): %d of %d rewards failed and scored %s: %s", member,
                                   members[member], scored[member]["errors"], len(samples),
                                   self.config.reward_fallback, scored[member]["error"])
                timing["score_s"] += scored[member]["score_s"]
                bar.update(1)
                bar.set_postfix(reward=f"{scored[member]['reward']:.3f}")

        self.fleet.dispatch(jobs, on_result, poll=collect, depth=depth)
        collect(block=True)
        bar.close()
        timing["rollout_s"] = time.perf_counter() - started
        if all(m["errors"] == len(samples) for m in scored):
            raise RewardFailed(f"iteration {iteration}: the reward raised on every sample") from scored[0]["error"]
        return scored, timing

    # ---- evaluation and checkpoints ---------------------------------------------------------------
    def evaluate(self, iteration: int) -> dict:
        """Held-out evaluation of the weights after `iteration` updates (0: the base model)."""
        summary = self.evaluator.evaluate(self.fleet, iteration)
        if self.runlog:
            self.runlog.log_eval(iteration, summary)
        say(self.progress, eval_line(iteration, summary))
        reward = first_set(summary)["reward"]  # the first set decides the best model
        if iteration > 0 and self.config.save_best and (self.best_eval is None or reward > self.best_eval):
            self.best_eval = reward
            self.fleet.export(str(self.run_dir / "best"))
        return summary

    def save(self, with_weights: bool = True) -> Path | None:
        """Checkpoint after the last committed iteration; without weights if no engine can export."""
        if self.run_dir is None:
            return None
        log = self.fleet.log
        iteration = log.committed
        # Export only engines known to hold exactly the committed iterations (not after an
        # interrupt mid-update); otherwise the checkpoint points at the last exported weights.
        settled = len(log) == iteration and all(e.applied == iteration for e in self.fleet.engines)
        export = self.fleet.export if with_weights and settled and self.fleet.engines else None
        state = {"iteration": iteration, "config": self.config.to_dict(),
                 "model_path": self.fleet.weights_path, "model_iteration": self.fleet.weights_iteration}
        try:
            path = checkpoint.save_checkpoint(self.run_dir, state, export, keep=self.config.keep_checkpoints)
        except Exception as exc:  # noqa: BLE001 - engines gone or dying (an interrupt, a crash), disk full
            if export is None:
                raise
            logger.warning("the checkpoint's export failed (%s); saving the update log from the last export", exc)
            export = None
            path = checkpoint.save_checkpoint(self.run_dir, state, None, keep=self.config.keep_checkpoints)
        if export is not None:
            self.fleet.exported(str((path / "model").resolve()), iteration)
        return path

