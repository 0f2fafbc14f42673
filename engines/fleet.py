"""The engines of a run and what keeps them in step: dispatch, the update log, broadcast, replacement.

The coordinator drives the fleet; the fleet owns the engines (through the pool that starts them)
and the update log. Each engine knows how many log entries its base weights hold
(`EngineHandle.applied`); a new update is appended to the log first and every engine is then
brought to the log's head. A replacement engine starts from the latest exported weights and is
brought to the head the same way, so no entry is ever applied twice, whenever the old engine died
(mid-rollout, mid-update, mid-replay on resume).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from typing import Callable

from engines.pool import EngineDiedError
from engines.updatelog import UpdateLog
from engines.variant import PIPELINE_DEPTH, Job, UpdateOptions

logger = logging.getLogger(__name__)


class EnginesDisagree(RuntimeError):
    """Engines that should hold the same weights report different checksums."""


class NoEngineLeft(RuntimeError):
    """Every engine died and none could be started again."""


@dataclasses.dataclass
class Running:
    """An engine working on job `job`."""

    engine: object
    job: int


@dataclasses.dataclass
class Starting:
    """A replacement engine that is starting up."""

    engine: object


class Fleet:
    def __init__(self, pool, log: UpdateLog, weights: tuple[str, int] | None = None):
        self.pool = pool
        self.log = log
        # The weights a replacement starts from, and how many log entries they already hold.
        self.weights_path, self.weights_iteration = weights or (pool.model_path, 0)
        for engine in pool.engines:
            engine.applied = self.weights_iteration
        self.restarts = 0
        self.spawn_error: Exception | None = None

    @property
    def engines(self) -> list:
        return list(self.pool.engines)

    # ---- work for whichever engine is free --------------------------------------------------------
    def dispatch(self, jobs: list[Job], on_result: Callable[[int, dict], None],
                 poll: Callable[[], None] | None = None, depth: int = PIPELINE_DEPTH) -> None:
        """Run each job (engines.variant.Job) on the next free engine (at most `depth` queued on one) and
        call `on_result(i, result)` as job i finishes. A dead engine's jobs go back in the queue and a
        replacement starts; raises NoEngineLeft when no engine is left. `poll` runs at least every 50 ms."""
        queue = deque(range(len(jobs)))
        pending: dict = {}  # ObjectRef -> Running | Starting

        def feed(engine) -> None:
            busy = sum(1 for e in pending.values() if isinstance(e, Running) and e.engine is engine)
            for _ in range(depth - busy):
                if queue:
                    job = queue.popleft()
                    pending[engine.submit(jobs[job].method, *jobs[job].args)] = Running(engine, job)

        for engine in self.engines:
            feed(engine)
        while pending:
            ready = self.pool.wait_any(list(pending), timeout=0.05 if poll else None)
            if poll:
                poll()
            if not ready:
                continue
            event = pending.pop(ready[0])
            try:
                result = event.engine.wait(ready[0])
            except EngineDiedError as exc:
                if isinstance(event, Running):
                    queue.appendleft(event.job)
                    if event.engine in self.pool.engines:  # its other queued job fails too: replace once
                        logger.warning("%s; its jobs go back in the queue and a new engine starts", exc)
                        replacement = self._replace(event.engine)
                        if replacement is not None:
                            pending[replacement.ready_ref] = Starting(replacement)
                else:
                    logger.error("replacement %s failed to start: %s", event.engine, exc)
                if not pending:
                    self._require_engines(exc)
                    for engine in self.engines:  # engines left, none busy: hand them the queue
                        feed(engine)
                continue
            if isinstance(event, Starting):
                self._catch_up(event.engine, result)
            feed(event.engine)  # before the result is handled: the engine must not wait on the caller
            if isinstance(event, Running):
                on_result(event.job, result)

    # ---- every engine -----------------------------------------------------------------------------
    def broadcast(self, method: str, *args) -> list:
        """The same RPC on every engine; one that died meanwhile is replaced (at the log's head) and asked again."""
        calls = [(engine, engine.submit("rpc", method, *args)) for engine in self.engines]
        results = []
        for engine, ref in calls:
            try:
                results.append(engine.wait(ref))
            except EngineDiedError as exc:
                logger.warning("%s during %s; starting a new engine", exc, method)
                replacement = self._replace_now(engine, exc)
                if replacement is not None:
                    results.append(replacement.call("rpc", method, *args))
        return results

    def apply_update(self, pairs, options: UpdateOptions | None = None) -> list[dict]:
        """Append an iteration to the log and bring every engine to the log's head."""
        self.log.append(pairs, (options or UpdateOptions()).to_log())
        return self.catch_up_all()

    def catch_up_all(self) -> list[dict]:
        """Every engine applies the log entries its weights lack (one per iteration in a run, the
        whole tail on resume); returns each engine's last result."""
        calls = []
        for engine in self.engines:
            refs = [engine.submit("rpc", "apply_update", pairs, options)
                    for pairs, options in self.log.pairs(engine.applied)]
            calls.append((engine, refs))
        results = []
        for engine, refs in calls:
            try:
                outcome = None
                for ref in refs:
                    outcome = engine.wait(ref)
                    engine.applied += 1
                results.append(outcome)
            except EngineDiedError as exc:
                logger.warning("%s while applying updates; starting a new engine", exc)
                replacement = self._replace_now(engine, exc)
                if replacement is not None:
                    results.append(replacement.last_update)
        return results

    def check_sync(self, iteration: int) -> dict[str, str]:
        """Every engine's checksums of the weights it serves (read through its compute kernels) and
        of its master must agree; returns them."""
        sums = self.broadcast("checksum")
        for kind, what in (("served", "serve different weights"), ("master", "hold different base weights")):
            if len({s[kind] for s in sums}) > 1:
                detail = ", ".join(f"{e}: {s[kind]}" for e, s in zip(self.engines, sums))
                raise EnginesDisagree(f"after iteration {iteration} the engines {what} ({kind} checksums {detail})")
        return sums[0]

    def export(self, path: str, dtype: str | None = None) -> str:
        return self.engines[0].export(path, dtype)

    def exported(self, path: str, iteration: int) -> None:
        """Replacements start from these weights from now on (they hold `iteration` log entries)."""
        self.weights_path, self.weights_iteration = path, iteration

    # ---- engine failures --------------------------------------------------------------------------
    def _replace(self, dead):
        """Drop a dead engine and start a new one in its bundle; None when even creating it fails."""
        self.pool.drop(dead)
        try:
            return self.pool.spawn(dead.index, self.weights_path)
        except Exception as exc:  # whatever stops a new engine, the run must end cleanly
            logger.error("cannot start a replacement for %s: %s", dead, exc)
            self.spawn_error = exc
            return None

    def _replace_now(self, dead, error: Exception):
        """Replace `dead` and wait until the replacement is at the log's head; None if it cannot start."""
        replacement = self._replace(dead)
        try:
            if replacement is None:
                raise EngineDiedError(f"no replacement for {dead}: {self.spawn_error}")
            info = replacement.wait(replacement.ready_ref)
        except EngineDiedError as failed:
            self._require_engines(failed)
            return None
        self._catch_up(replacement, info, verify=False)
        return replacement

    def _catch_up(self, engine, info: dict, verify: bool = True) -> None:
        """Bring a new engine to the log's head; with `verify`, it must then match the others' base."""
        engine.info = info
        engine.applied = self.weights_iteration
        engine.last_update = None
        for pairs, options in self.log.pairs(engine.applied):
            engine.last_update = engine.apply_update(pairs, options)
            engine.applied += 1
        reference = self.engines
        if reference and verify:
            want, got = reference[0].master_checksum(), engine.master_checksum()
            if want != got:
                raise EnginesDisagree(f"replacement {engine} has base checksum {got}, the others {want}")
        self.pool.adopt(engine)
        self.restarts += 1  # counted once the replacement holds the others' weights and takes work
        logger.warning("%s replaced a dead engine and caught up on %d updates", engine,
                       len(self.log) - self.weights_iteration)

    def _require_engines(self, error: Exception) -> None:
        if not self.pool.engines:
            raise NoEngineLeft(f"every engine died and none could be started again ({error})") from error
