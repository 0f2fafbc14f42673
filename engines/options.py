"""How the engines are created: EngineOptions (from a run's or an evaluation's config only) and what
one engine actor gets from them: its environment (its own cores, vLLM's settings) and its `LLM(...)`
or backend arguments."""

from __future__ import annotations

import dataclasses
import os

from engines.variant import Variant, lora_rank_for

QUIET_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
             "TQDM_DISABLE": "1",
             # vLLM 0.32 picks its V2 model runner on CUDA; the CPU build cannot run it ("Model Runner V2
             # requires Triton"), so every engine test here ran the V1 runner. Pinned so a CUDA engine
             # runs the code the tests cover; VLLM_USE_V2_MODEL_RUNNER=1 in the driver's environment opts in.
             "VLLM_USE_V2_MODEL_RUNNER": "0"}
# The driver's choices that the engines' processes must see too (Ray's workers keep the environment
# Ray started with): the CPU kernel level cap, the kernel cache, and the tests' fault injection.
FORWARDED_ENV = ("ESVLLM_CPU_KERNEL", "ESVLLM_KERNEL_FAULT", "ESVLLM_CACHE", "ESVLLM_FAKE_CORRUPT", "ESVLLM_FAKE_HOLD",
                 "ESVLLM_FAKE_MEMORY",
                 "VLLM_USE_V2_MODEL_RUNNER")


VLLM_MAX_NUM_SEQS = 256  # vLLM's own default: sequences an engine runs at once
EVAL_GPU_SHARE = 0.85  # vLLM's share of a GPU when no memory plan sets it (evaluation: no ES state)


@dataclasses.dataclass
class EngineOptions:
    """How the engines are created: built from a validated run config (`from_config`) or evaluation
    config (`for_eval`) only; no decision has a default here, so no layer can disagree with the config."""

    device: str  # "cpu" or "cuda"
    backend: str  # a name in engines.backends.BACKENDS
    num_engines: int
    cuda_devices: list[int] | None  # GPU ids, K per engine (device "cuda")
    dtype: str  # model dtype in vLLM; "auto": float32 on CPU, bfloat16 on CUDA
    master_dtype: str  # ES master copy; "model" keeps it in the model dtype (less memory)
    noise_cache_mb: int  # memory per engine for its own members' noise, reused by the update (0: off)
    max_model_len: int
    gpu_memory_utilization: float  # CUDA only (the memory plan sets it); CPU sizes the KV cache
    tensor_parallel_size: int  # GPUs (CPU: core groups) per engine
    noise_mode: str  # "iid" or "paper_correlated": one noise stream per member for every tensor
    es_state: bool  # False: generation only (evaluation), the weights as vLLM loads them, no master
    lowrank_slots: int  # low-rank mode: members an engine serves at once as LoRA adapters (0: off)
    lowrank_rank: int
    seed: int
    in_process: bool = False  # one engine in the driver's process, no Ray (engines.local)
    max_num_seqs: int = VLLM_MAX_NUM_SEQS
    die_on_call: dict[int, tuple] | None = None  # fake backend only: index -> (method or None, k-th call)

    @classmethod
    def from_config(cls, config, plan=None) -> "EngineOptions":
        """The engine settings of a validated `esvllm.config.RunConfig` (and its memory plan, on CUDA)."""
        variant = Variant.from_config(config)
        share = config.gpu_memory_utilization or (plan.gpu_memory_utilization if plan else EVAL_GPU_SHARE)
        return cls(device=config.resolved_device, backend=config.engine, num_engines=variant.engines,
                   cuda_devices=config.gpu_ids or None, dtype=config.precision, master_dtype=config.master_dtype,
                   noise_cache_mb=config.noise_cache_mb, max_model_len=config.max_model_len,
                   gpu_memory_utilization=share, tensor_parallel_size=config.tensor_parallel_size,
                   noise_mode=config.noise, es_state=True, lowrank_slots=variant.lowrank_slots,
                   lowrank_rank=config.rank, seed=config.global_seed, in_process=config.in_process,
                   die_on_call=fake_faults_from_env() if config.engine == "fake" else None)

    @classmethod
    def for_eval(cls, config) -> "EngineOptions":
        """The engines of a validated `esvllm.config.EvalConfig`: generation only, no ES state."""
        gpus = config.gpu_ids
        return cls(device=config.resolved_device, backend=config.engine, num_engines=len(gpus) or config.num_engines,
                   cuda_devices=gpus or None, dtype=config.precision, master_dtype="float32", noise_cache_mb=0,
                   max_model_len=config.max_model_len, gpu_memory_utilization=EVAL_GPU_SHARE,
                   tensor_parallel_size=1, noise_mode="iid", es_state=False, lowrank_slots=0, lowrank_rank=1,
                   seed=config.global_seed, in_process=config.in_process)

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
