"""Start and talk to the vLLM engine actors (coordinator side); how each is set up is engines.options.

    pool = EnginePool.start(model_path, EngineOptions.from_config(RunConfig(device="cpu", num_engines=2)))
    pool.engines[0].perturb(seed=7, sigma=1e-3)
    pool.shutdown()

CPU: one actor per engine, each bound to its own share of the cores. CUDA: one actor per GPU, placed
by a Ray placement group (one bundle per GPU, spread over the cluster's nodes). Every call that fails
because an actor died raises `EngineDiedError` naming the engine.
"""

from __future__ import annotations

import logging
import uuid

from engines.backends import actor_class
from engines.options import EngineOptions, actor_env, actor_options
from engines.ray_node import start_ray
from kernels import check_sigma

logger = logging.getLogger(__name__)


# In-process vLLM (collective_rpc reaches the worker directly), logging only warnings and errors.
PLACEMENT_TIMEOUT_S = 120

class EngineDiedError(RuntimeError):
    """An engine actor is gone (killed, crashed, or its node left)."""


class EngineHandle:
    """Coordinator-side handle of one engine actor; methods block and return the RPC's result."""

    def __init__(self, index: int, actor, info: dict | None = None):
        self.index = index
        self.actor = actor
        self.info = info or {}
        self.applied = 0  # update-log entries its base weights hold (kept by engines.fleet)
        self.last_update: dict | None = None

    def __repr__(self):
        return f"engine {self.index} (pid {self.info.get('pid', '?')})"

    def call(self, method: str, *args):
        return self.wait(self.submit(method, *args))

    def submit(self, method, *args):
        """Start an actor call, `method` an EngineActorBase method (or its name); returns an ObjectRef
        for `wait` (lets the coordinator overlap calls)."""
        return getattr(self.actor, method if isinstance(method, str) else method.__name__).remote(*args)

    def wait(self, ref, timeout: float | None = None):
        import ray

        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.RayActorError as exc:
            raise EngineDiedError(f"{self} died: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc

    # The ES verbs; arguments are checked here, before any RPC.
    def perturb(self, seed: int, sigma: float, sign: int = 1):
        check_sigma(sigma)
        return self.call("perturb", int(seed), float(sigma), int(sign))

    def restore(self) -> dict[str, str]:
        """Back to the base weights; returns the checksums of what the engine now serves and its master."""
        return self.call("rpc", "restore")

    def apply_update(self, pairs, options: dict | None = None):
        return self.call("rpc", "apply_update", [(int(s), float(c)) for s, c in pairs], options)

    def checksum(self) -> dict[str, str]:
        """{"served": digest of the weights the model computes with, "master": digest of the base}."""
        return self.call("rpc", "checksum")

    def master_checksum(self) -> str:
        return self.call("rpc", "master_checksum")

    def export(self, path: str, dtype: str | None = None) -> str:
        return self.call("rpc", "export", str(path), dtype)

    def read_weights(self, names=None):
        return self.call("rpc", "read_weights", names)

    def master_weights(self, names=None):
        return self.call("rpc", "master_weights", names)

    def generate(self, prompts, sampling: dict):
        return self.call("generate", list(prompts), dict(sampling))


def check_model_dir(model_path: str) -> None:
    from pathlib import Path

    if not (Path(model_path) / "config.json").is_file():
        raise FileNotFoundError(f"{model_path}: not a model directory (no config.json); pass a checkpoint "
                                "directory (esvllm.models.resolve_model turns a built-in or Hub name into one)")


def start_engines(model_path: str, options: EngineOptions, ray_address: str | None = None):
    """The run's engines: Ray actors (EnginePool), or with options.in_process one engine in this process."""
    if options.in_process:
        from engines.local import LocalPool

        return LocalPool.start(model_path, options)
    return EnginePool.start(model_path, options, ray_address)


class EnginePool:
    """The engine actors of a run, one per placement-group bundle (one per GPU, or per CPU share)."""

    def __init__(self, model_path: str, options: EngineOptions, placement_group):
        self.model_path = model_path
        self.options = options
        self.placement_group = placement_group
        self.engines: list[EngineHandle] = []
        self.run_tag = uuid.uuid4().hex[:8]
        self.spawned: set[int] = set()
        self.generation = 0

    @classmethod
    def start(cls, model_path: str, options: EngineOptions, ray_address: str | None = None) -> "EnginePool":
        import ray
        from ray.util.placement_group import placement_group

        check_model_dir(model_path)  # before Ray or vLLM start
        tp = options.tensor_parallel_size
        start_ray(options, ray_address)  # a no-op when the caller started Ray (esvllm.run does)
        if options.device == "cpu":
            # Cores are assigned by vLLM's thread binding, not by Ray's CPU accounting: the bundles
            # only place engines (spread over the cluster's nodes).
            bundles, strategy = [{"CPU": 0.01}] * options.num_engines, "SPREAD"
        else:
            # One bundle per engine with all its GPUs: a bundle lives on one node, as vLLM's ranks must.
            bundles, strategy = [{"GPU": tp, "CPU": 1}] * options.num_engines, "PACK"
        group = placement_group(bundles, strategy=strategy)
        try:
            ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(group)
            raise RuntimeError(
                f"Ray could not place {options.num_engines} engine(s) of {bundles[0]} within "
                f"{PLACEMENT_TIMEOUT_S} s; the cluster has {ray.cluster_resources()}. Ask for fewer engines "
                "(--cuda_devices / --num_engines) or free the GPUs other jobs hold") from None
        pool = cls(model_path, options, group)
        pool.engines = [pool.spawn(i) for i in range(options.num_engines)]
        for engine in pool.engines:  # all start in parallel; wait for each
            engine.info = engine.wait(engine.ready_ref)
            logger.info("engine %d ready in %.1fs: %s", engine.index, engine.info["start_s"], engine.info)
        return pool

    @staticmethod
    def wait_any(refs: list, timeout: float | None = None) -> list:
        """The refs among `refs` that are ready: at least one, unless `timeout` passes first."""
        import ray

        return ray.wait(refs, num_returns=1, timeout=timeout)[0]

    def spawn(self, index: int, model_path: str | None = None) -> EngineHandle:
        """Create engine `index` in its bundle; `handle.ready_ref` resolves to its info when it is up."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        path = model_path or self.model_path
        env = actor_env(self.options, index)
        if self.options.device == "cpu":
            resources = {"num_cpus": 0.01}
        else:
            resources = {"num_cpus": 1, "num_gpus": self.options.tensor_parallel_size}
        strategy = PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=index)
        options = actor_options(path, self.options, index)
        if self.options.die_on_call and index in self.options.die_on_call and index not in self.spawned:
            options["die_on_call"] = self.options.die_on_call[index]  # the first engine of that index only
        self.spawned.add(index)
        self.generation += 1  # a dead actor's name may not be free yet: every spawn gets its own
        actor = ray.remote(actor_class(self.options.backend)).options(
            **resources, scheduling_strategy=strategy, runtime_env={"env_vars": env},
            name=f"esvllm_engine_{index}_{self.run_tag}_{self.generation}",
        ).remote(index, path, options)
        handle = EngineHandle(index, actor)
        handle.ready_ref = actor.ready.remote()
        return handle

    def drop(self, engine: EngineHandle) -> None:
        """Forget a dead engine (its bundle is free for a replacement)."""
        self.engines = [e for e in self.engines if e is not engine]

    def adopt(self, engine: EngineHandle) -> None:
        """Add a started engine, keeping the list in index order."""
        self.engines = sorted([*self.engines, engine], key=lambda e: e.index)

    def shutdown(self) -> None:
        import ray

        for engine in self.engines:
            try:
                ray.kill(engine.actor)
            except Exception:  # already dead: nothing to stop
                pass
        if self.placement_group is not None:
            ray.util.remove_placement_group(self.placement_group)
            self.placement_group = None
        self.engines = []
