"""Start and talk to the vLLM engine actors (coordinator side).

    pool = EnginePool.start(model_path, EngineOptions(device="cpu", num_engines=2))
    pool.engines[0].perturb(seed=7, sigma=1e-3)
    pool.shutdown()

CPU: one actor per engine, each bound to its own share of the cores. CUDA: one actor per GPU, placed
by a Ray placement group (one bundle per GPU, spread over the cluster's nodes). Every call that fails
because an actor died raises `EngineDiedError` naming the engine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid

from engines.backends import BACKENDS, actor_class
from engines.ray_node import start_ray
from engines.variant import Variant, lora_rank_for
from kernels import check_sigma

logger = logging.getLogger(__name__)


# In-process vLLM (collective_rpc reaches the worker directly), logging only warnings and errors.
PLACEMENT_TIMEOUT_S = 120

QUIET_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
             "TQDM_DISABLE": "1",
             # vLLM 0.32 picks its V2 model runner on CUDA; the CPU build cannot run it ("Model Runner V2
             # requires Triton"), so every engine test here ran the V1 runner. Pinned so a CUDA engine
             # runs the code the tests cover; VLLM_USE_V2_MODEL_RUNNER=1 in the driver's environment opts in.
             "VLLM_USE_V2_MODEL_RUNNER": "0"}
# The driver's choices that the engines' processes must see too (Ray's workers keep the environment
# Ray started with): the CPU kernel level cap, the kernel cache, and the tests' fault injection.
FORWARDED_ENV = ("ESVLLM_CPU_KERNEL", "ESVLLM_KERNEL_FAULT", "ESVLLM_CACHE", "ESVLLM_FAKE_CORRUPT", "ESVLLM_FAKE_HOLD",
                 "VLLM_USE_V2_MODEL_RUNNER")


class EngineDiedError(RuntimeError):
    """An engine actor is gone (killed, crashed, or its node left)."""


@dataclasses.dataclass
class EngineOptions:
    """How the engines are created (built from a run's config by `from_config`)."""

    device: str = "cpu"  # "cpu" or "cuda"
    backend: str = "vllm"  # a name in engines.backends.BACKENDS
    num_engines: int = 1
    cuda_devices: list[int] | None = None  # GPU ids, one engine each (device "cuda")
    dtype: str = "auto"  # model dtype in vLLM; "auto": float32 on CPU, bfloat16 on CUDA
    master_dtype: str = "float32"  # ES master copy; "model" keeps it in the model dtype (less memory)
    noise_cache_mb: int = 0  # memory per engine for its own members' noise, reused by the update (0: off)
    max_model_len: int = 512
    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.85  # CUDA only (the memory plan sets it); CPU sizes the KV cache
    tensor_parallel_size: int = 1  # GPUs (CPU: core groups) per engine
    noise_mode: str = "iid"  # or "paper_correlated": one noise stream per member for every tensor
    es_state: bool = True  # False: generation only (evaluation), the weights as vLLM loads them, no master
    lowrank_slots: int = 0  # low-rank mode: members an engine serves at once as LoRA adapters (0: off)
    lowrank_rank: int = 1
    seed: int = 0
    die_on_call: dict[int, tuple] | None = None  # fake backend only: index -> (method or None, k-th call)

    def __post_init__(self):
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device!r}: use 'cpu' or 'cuda'")
        if self.device == "cuda" and self.cuda_devices:
            self.num_engines = len(self.cuda_devices) // self.tensor_parallel_size
        if self.num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {self.num_engines}")
        if self.device == "cpu":
            cores = len(os.sched_getaffinity(0))
            if self.num_engines * self.tensor_parallel_size > cores:
                raise ValueError(
                    f"num_engines={self.num_engines} x tensor_parallel_size={self.tensor_parallel_size} is more "
                    f"than the {cores} CPU cores here; use --num_engines {cores // self.tensor_parallel_size} or fewer"
                )
        if self.tensor_parallel_size > 1 and self.backend != "vllm":
            raise ValueError(f"tensor_parallel_size {self.tensor_parallel_size}: only the vllm backend shards")
        if self.backend not in BACKENDS:
            raise ValueError(f"engine backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.master_dtype not in ("float32", "model"):
            raise ValueError(f"master_dtype {self.master_dtype!r}: use 'float32' or 'model'")

    @classmethod
    def from_config(cls, config, plan=None) -> "EngineOptions":
        """The engine settings of a validated `esvllm.config.RunConfig` (and its memory plan, on CUDA)."""
        share = config.gpu_memory_utilization or (plan.gpu_memory_utilization if plan else 0.85)
        return cls(device=config.resolved_device, backend=config.engine, num_engines=config.num_engines,
                   cuda_devices=config.gpu_ids or None, dtype=config.precision, master_dtype=config.master_dtype,
                   noise_cache_mb=config.noise_cache_mb, max_model_len=config.max_model_len,
                   gpu_memory_utilization=share, tensor_parallel_size=config.tensor_parallel_size,
                   noise_mode=config.noise, lowrank_rank=config.rank, lowrank_slots=Variant.from_config(config).lowrank_slots,
                   seed=config.global_seed,
                   die_on_call=fake_faults_from_env() if config.engine == "fake" else None)

    def model_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float32" if self.device == "cpu" else "bfloat16"

    def noise_cache_bytes(self) -> int:
        return int(self.noise_cache_mb) * 2**20


def fake_faults_from_env() -> dict[int, tuple] | None:
    """ESVLLM_FAKE_DIE_ON_CALL="1:3" (any call) or "1:apply_update:2" (that RPC): fake engine 1 dies
    at that call (a test hook; several separated by commas)."""
    spec = os.environ.get("ESVLLM_FAKE_DIE_ON_CALL")
    if not spec:
        return None
    faults = {}
    for part in spec.split(","):
        index, *method, k = part.split(":")
        faults[int(index)] = (method[0] if method else None, int(k))
    return faults


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

    def submit(self, method: str, *args):
        """Start an actor call; returns an ObjectRef for `wait` (lets the coordinator overlap calls)."""
        return getattr(self.actor, method).remote(*args)

    def wait(self, ref, timeout: float | None = None):
        import ray

        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.RayActorError as exc:
            raise EngineDiedError(f"{self} died: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from exc

    # The ES verbs; arguments are checked here, before any RPC.
    def perturb(self, seed: int, sigma: float, sign: int = 1):
        check_sigma(sigma)
        return self.call("rpc", "perturb", int(seed), float(sigma), int(sign))

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

        from pathlib import Path

        if not (Path(model_path) / "config.json").is_file():  # before Ray or vLLM start
            raise FileNotFoundError(f"{model_path}: not a model directory (no config.json); pass a checkpoint "
                                    "directory (esvllm.models.resolve_model turns a built-in or Hub name into one)")
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


def split_cores(num_engines: int) -> list[str]:
    """Give each CPU engine its own contiguous share of this process's cores (e.g. '0', '1')."""
    cores = sorted(os.sched_getaffinity(0))
    share = len(cores) // num_engines
    return [",".join(str(c) for c in cores[i * share : (i + 1) * share]) for i in range(num_engines)]


def engine_cores(options: EngineOptions) -> list[str]:
    """VLLM_CPU_OMP_THREADS_BIND of each engine: its cores, one '|'-separated list per rank ('0|1')."""
    tp = options.tensor_parallel_size
    shares = split_cores(options.num_engines * tp)
    return ["|".join(shares[i * tp : (i + 1) * tp]) for i in range(options.num_engines)]


def actor_env(options: EngineOptions, index: int) -> dict[str, str]:
    """The environment of engine `index`'s actor process (Ray's runtime_env)."""
    env = {**QUIET_ENV, **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    if options.device == "cpu":
        env["VLLM_CPU_OMP_THREADS_BIND"] = engine_cores(options)[index]
    return env


def actor_options(model_path: str, options: EngineOptions, index: int = 0) -> dict:
    """The `LLM(...)` keyword arguments (or HF settings) and ES settings one engine actor gets."""
    dtype = options.model_dtype()
    master = dtype if options.master_dtype == "model" else "float32"
    es = {"master_dtype": master, "noise_cache_bytes": options.noise_cache_bytes(), "noise_mode": options.noise_mode,
          "es_state": options.es_state}
    if options.backend == "fake":  # it holds as many low-rank slots as a vLLM engine would
        return {"dtype": dtype, **es, "lowrank_slots": options.lowrank_slots}
    if options.backend == "hf":
        cores = [int(c) for c in engine_cores(options)[index].split(",")] if options.device == "cpu" else None
        return {"dtype": dtype, "device": options.device, "cores": cores, **es}
    llm_kwargs = dict(dtype=dtype, max_model_len=options.max_model_len, max_num_seqs=options.max_num_seqs,
                      seed=options.seed, enable_prefix_caching=False)
    if options.lowrank_slots:  # members as adapters in fixed slots (engines.lora_slots)
        llm_kwargs.update(enable_lora=True, max_lora_rank=lora_rank_for(options.lowrank_rank),
                          max_loras=options.lowrank_slots, max_cpu_loras=options.lowrank_slots)
        es.update(lowrank_slots=options.lowrank_slots, lowrank_rank=options.lowrank_rank)
    if options.tensor_parallel_size > 1:  # ranks as processes of the actor (in a placement group vLLM would pick Ray)
        llm_kwargs.update(tensor_parallel_size=options.tensor_parallel_size, distributed_executor_backend="mp")
    if options.device == "cpu":
        llm_kwargs.update(enforce_eager=True, gpu_memory_utilization=0.1,
                          kv_cache_memory_bytes=kv_cache_bytes(model_path, dtype, options))
    else:
        llm_kwargs.update(gpu_memory_utilization=options.gpu_memory_utilization)
    return {"llm_kwargs": llm_kwargs, **es}


def kv_cache_bytes(model_path: str, dtype: str, options: EngineOptions) -> int:
    """KV cache for max_num_seqs full-length sequences, sized from the model's shape (CPU)."""
    import json

    cfg = json.loads(open(os.path.join(model_path, "config.json")).read())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    per_token = 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * (4 if dtype == "float32" else 2)
    return max(64 * 2**20, per_token * options.max_model_len * options.max_num_seqs)
