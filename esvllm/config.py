"""Run configuration: one dataclass, experiment presets from `experiments/NAME.toml`, CLI overrides.

Precedence: field defaults (the paper's: N=30, sigma=0.001, alpha=0.0005, greedy) < the experiment
file < flags given on the command line. Validation runs before any engine starts and every message
names the flag and how to fix it. Imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

from engines.backends import BACKENDS
from engines.variant import OPTIMIZERS
from esvllm.es import SCHEDULES, SHAPINGS
from rewards.data import TASKS, TEMPLATES

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"

# The choices of each flag: the parser's help and the checks both read these.
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bfloat16", "float16", "float32")
MASTER_DTYPES = ("float32", "model")
NOISE_MODES = ("iid", "paper_correlated")
PERTURBATIONS = ("full", "lowrank")
MAX_MODEL_LEN = 2048  # longest prompt + completion, run and evaluation alike: the default --max_tokens 1024 plus a prompt


def field(default, help: str, *, one_of: tuple | None = None, at_least: float | None = None, **kw):
    """A config field: its help text, and optionally the values it takes (`one_of`) or its least value."""
    return dataclasses.field(default=default, metadata={"help": help, "one_of": one_of, "at_least": at_least, **kw})


def bad(flag: str, value, fix: str):
    raise ValueError(f"--{flag} {value!r}: {fix}")


def check_fields(config) -> None:
    """The checks every config shares, from the fields' own metadata: choices and least values."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        one_of, least = f.metadata.get("one_of"), f.metadata.get("at_least")
        if one_of is not None and value not in one_of:
            bad(f.name, value, f"use one of {', '.join(map(str, one_of))}")
        if least is not None and value is not None and value < least:
            bad(f.name, value, f"must be >= {least}")


class DeviceChoice:
    """`--device` and `--cuda_devices` as the run and the evaluation read them."""

    device: str
    cuda_devices: str | None

    def check_devices(self) -> None:
        if self.device == "cpu" and self.cuda_devices:
            bad("cuda_devices", self.cuda_devices, "GPU ids with --device cpu; drop one of the two")
        parse_gpu_ids(self.cuda_devices)

    def check_in_process(self) -> None:
        """--in_process: one engine of one device in this process, so no cluster and no second engine."""
        if not self.in_process:
            return
        if len(self.gpu_ids) > 1:
            bad("cuda_devices", self.cuda_devices, "--in_process runs one engine on one GPU: give one id")
        if self.num_engines != 1:
            bad("num_engines", self.num_engines, "--in_process runs one engine: use 1")
        if getattr(self, "tensor_parallel_size", 1) > 1:
            bad("tensor_parallel_size", self.tensor_parallel_size, "--in_process runs one engine on one device: use 1")
        if getattr(self, "ray_address", None):
            bad("ray_address", self.ray_address, "--in_process starts no Ray; drop one of the two")

    @property
    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if self.cuda_devices else "cpu"

    @property
    def gpu_ids(self) -> list[int]:
        return parse_gpu_ids(self.cuda_devices)


@dataclasses.dataclass
class RunConfig(DeviceChoice):
    # what to train
    experiment: str = field("custom", "name of the run (and of its preset in experiments/, if any)")
    model_name: str = field("tiny", "HF checkpoint directory, Hub name, or built-in model (tiny, small, medium, tiny-llama, tiny-qwen3)")
    task: str = field("countdown", "task: its data, prompt and default reward", one_of=TASKS)
    reward: str | None = field(None, "reward name (countdown, conciseness) or module:function; default: the task's")
    data: str | None = field(None, "data file (.json, .jsonl, HF dataset dir, DIR:split); default: the task's generator")
    eval_data: list[str] | None = field(None, "held-out sets to evaluate on instead of the --data rows after the training ones: "
                                              "PATH or NAME=PATH[:split], several allowed", nargs="+")
    prompt_field: str | None = field(None, "the column holding the prompt; default: prompt, context, problem, question or messages")
    template: str = field("auto", "prompt template: auto (the task's), plain, chat (the tokenizer's chat template), qwen_math",
                          one_of=TEMPLATES)
    data_sample: int = field(200, "number of training samples (the paper's --data_sample)", at_least=1)
    batch_size: int | None = field(None, "prompts per iteration, drawn from the training samples; default: all")
    mini_batch_size: int | None = field(None, "prompts per generate call within a member (less memory at once); default: all")
    test_size: int = field(64, "held-out samples kept apart from training (never overlapping)")
    reward_fallback: float = field(0.0, "score of a completion whose reward function raises or times out")
    reward_timeout: float | None = field(None, "cut a reward call off after this many seconds (runs rewards in worker processes)")
    # ES
    sigma: float = field(0.001, "noise scale of the perturbations")
    alpha: float = field(0.0005, "learning rate: the update is alpha/N * sum f_i eps_i")
    shaping: str = field("zscore", "fitness shaping f of the rewards: zscore (the paper's), centered_rank, raw (minus the mean)",
                         one_of=tuple(SHAPINGS))
    antithetic: bool = field(False, "mirrored pairs: members 2k and 2k+1 are +sigma*eps_k and -sigma*eps_k, on one engine, "
                                    "one noise draw (population_size even)")
    optimizer: str = field("sgd", "update rule on g = (1/N) sum f_i eps_i: sgd (the paper's: theta += alpha g), momentum, adam",
                           one_of=OPTIMIZERS)
    momentum: float = field(0.9, "momentum coefficient (--optimizer momentum)")
    beta1: float = field(0.9, "Adam's first-moment decay")
    beta2: float = field(0.999, "Adam's second-moment decay")
    adam_eps: float = field(1e-8, "Adam's epsilon")
    weight_decay: float = field(0.0, "decoupled weight decay: theta -= alpha * weight_decay * theta each update")
    sigma_schedule: str = field("constant", "sigma over the run (to --sigma_final)", one_of=SCHEDULES)
    sigma_final: float | None = field(None, "sigma at the last iteration (default: sigma / 10)")
    alpha_schedule: str = field("constant", "alpha over the run (to --alpha_final)", one_of=SCHEDULES)
    alpha_final: float | None = field(None, "alpha at the last iteration (default: alpha / 10)")
    perturbation: str = field("full", "full (the paper's: every weight) or lowrank: EGGROLL's rank-r perturbations of "
                                      "the block linears' weights only (q/k/v/o, gate/up/down; embeddings, norms and "
                                      "biases stay), all members of an engine generated in one batch as LoRA adapters",
                               one_of=PERTURBATIONS)
    rank: int = field(1, "rank r of the low-rank perturbations (--perturbation lowrank)")
    noise: str = field("iid", "noise: iid per element (default), or paper_correlated (one stream per member for every "
                              "tensor, so same-shaped tensors get the same noise, as the paper's first scripts)",
                        one_of=NOISE_MODES)
    population_size: int = field(30, "N, perturbed models per iteration")
    num_iterations: int = field(1000, "ES iterations", at_least=1)
    global_seed: int = field(42, "seed of the seed schedule and the data")
    # rollouts
    temperature: float = field(0.0, "sampling temperature; 0 is greedy, as the paper")
    max_tokens: int = field(1024, "most tokens generated per completion", at_least=1)
    # engines
    engine: str = field("vllm", "engine backend: vllm; hf (transformers generate, the paper's original way); "
                                "fake (no model, for tests)", one_of=tuple(BACKENDS))
    device: str = field("auto", "cpu, cuda, or auto (cuda when --cuda_devices is given)", one_of=DEVICES)
    cuda_devices: str | None = field(None, "comma-separated GPU ids, e.g. 0,1,2,3: one engine per id, or per K ids with --tensor_parallel_size K")
    num_engines: int = field(1, "engines on CPU (each gets its own cores)", at_least=1)
    precision: str = field("auto", "model dtype in vLLM: auto (float32 on CPU, bfloat16 on CUDA)", one_of=PRECISIONS)
    master_dtype: str = field("float32", "ES master copy: float32, or model (less memory, sub-ulp updates lost)",
                              one_of=MASTER_DTYPES)
    noise_cache_mb: int = field(0, "per engine: memory for keeping its own members' noise so the update need not draw it again (CPU only; 0: off)",
                                at_least=0)
    max_model_len: int = field(MAX_MODEL_LEN, "longest prompt + completion, in tokens", at_least=1)
    tensor_parallel_size: int = field(1, "GPUs (CPU: core groups) per engine; --cuda_devices lists K ids per engine", at_least=1)
    gpu_memory_utilization: float | None = field(None, "vLLM's share of each GPU; default: computed by the memory plan so the ES state fits")
    gpu_memory_gb: float | None = field(None, "GPU memory to plan for (with --dry_run on a machine without the GPU); default: the GPU's")
    dry_run: bool = field(False, "validate config, data, model config and the memory plan, print the plan, start nothing")
    sync_check_every: int = field(1, "compare the engines' checksums (served weights and master) every K iterations (0: never)",
                                  at_least=0)
    ray_address: str | None = field(None, "join this Ray cluster; default: a private local one on 127.0.0.1")
    in_process: bool = field(False, "one engine in this process, no Ray (a notebook, one GPU, a machine without Ray); "
                                    "the same weights as the Ray run")
    # checkpoints and evaluation
    save_every: int = field(10, "checkpoint every K iterations (and at the end); 0: only at the end", at_least=0)
    keep_checkpoints: int = field(2, "checkpoints kept (older ones are pruned)", at_least=0)
    eval_every: int = field(0, "evaluate the current weights on the held-out split every K iterations (0: never)", at_least=0)
    save_best: bool = field(False, "keep the best model by eval reward in <run>/best")
    resume: str | None = field(None, "continue the stopped run in this run directory")
    # output
    output_dir: str = field("runs", "where run directories are created (the paper's --experiment_dir)")
    verbose: bool = field(False, "show engine logs")
    wandb_project: str | None = field(None, "also log to Weights & Biases, this project (needs `pip install wandb`; "
                                            "WANDB_MODE=offline works without a network)")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        check_fields(self)
        self.check_devices()
        self.check_in_process()
        if self.population_size < 2:
            bad("population_size", self.population_size, "needs at least 2 members to z-score rewards")
        for name in ("sigma", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                bad(name, value, "must be a finite number > 0 (the paper uses sigma 0.001, alpha 0.0005)")
        if self.batch_size is not None and not 1 <= self.batch_size <= self.data_sample:
            bad("batch_size", self.batch_size, f"must be between 1 and --data_sample ({self.data_sample})")
        if self.reward_timeout is not None and not self.reward_timeout > 0:
            bad("reward_timeout", self.reward_timeout, "must be > 0 seconds")
        if self.save_best and not self.eval_every:
            bad("save_best", self.save_best, "needs --eval_every K to know which model is best")
        if self.temperature < 0:
            bad("temperature", self.temperature, "must be >= 0 (0 is greedy)")
        if self.antithetic and self.population_size % 2:
            bad("population_size", self.population_size, "must be even with --antithetic (members come in pairs)")
        if self.tensor_parallel_size > 1 and self.engine != "vllm":
            bad("tensor_parallel_size", self.tensor_parallel_size, f"only the vllm engine shards (--engine {self.engine})")
        if self.optimizer != "sgd" and self.tensor_parallel_size > 1:
            bad("optimizer", self.optimizer, "optimizer state is not sharded yet: use sgd with --tensor_parallel_size > 1")
        for name in ("sigma_final", "alpha_final"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value <= 0):
                bad(name, value, "must be a finite number > 0")
        if not 0 <= self.weight_decay < 1:
            bad("weight_decay", self.weight_decay, "must be in [0, 1)")
        if self.perturbation == "lowrank":
            if not 1 <= self.rank <= 512:
                bad("rank", self.rank, "must be between 1 and 512")
            for flag, value, fix in (("tensor_parallel_size", self.tensor_parallel_size > 1, "1"),
                                     ("antithetic", self.antithetic, "off"), ("noise", self.noise != "iid", "iid")):
                if value:
                    bad(flag, getattr(self, flag), f"low-rank mode needs {fix}")
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            bad("mini_batch_size", self.mini_batch_size, "must be >= 1")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            bad("gpu_memory_utilization", self.gpu_memory_utilization, "must be in (0, 1]")
        if self.gpu_memory_gb is not None and not self.gpu_memory_gb > 0:
            bad("gpu_memory_gb", self.gpu_memory_gb, "must be > 0 (GB of one GPU)")
        ids = self.gpu_ids
        if ids and len(ids) % self.tensor_parallel_size:
            bad("cuda_devices", self.cuda_devices, f"{len(ids)} GPUs do not split into engines of "
                f"--tensor_parallel_size {self.tensor_parallel_size}; give a multiple of it")
        if not 0 <= self.global_seed < 2**31:
            bad("global_seed", self.global_seed, "must be in [0, 2**31)")

    # derived values (resolved_device, gpu_ids: DeviceChoice)

    @property
    def reward_spec(self) -> str:
        return self.reward or self.task

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)




def parse_gpu_ids(cuda_devices) -> list[int]:
    """The GPU ids of --cuda_devices ("0,1,2,3"), checked: none negative, none twice."""
    if not cuda_devices:
        return []
    try:
        ids = [int(x) for x in str(cuda_devices).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--cuda_devices {cuda_devices!r}: use comma-separated GPU ids, e.g. 0,1,2,3") from None
    if any(i < 0 for i in ids):
        raise ValueError(f"--cuda_devices {cuda_devices!r}: GPU ids are >= 0, as nvidia-smi numbers them")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--cuda_devices {cuda_devices!r}: lists a GPU twice; give each id once")
    return ids


@dataclasses.dataclass
class EvalConfig(DeviceChoice):
    """`python -m esvllm.eval`: greedy evaluation of a model on held-out data."""

    model: str = field(None, "HF checkpoint directory or built-in model name (required)")
    task: str = field("countdown", "task of the data and default reward", one_of=TASKS)
    data: str | None = field(None, "data file (.json, .jsonl, HF dataset dir, DIR:split); all of it is evaluated")
    prompt_field: str | None = field(None, "the column holding the prompt (default: prompt, context, problem, ...)")
    template: str = field("auto", "prompt template: auto (the task's), plain, chat, qwen_math", one_of=TEMPLATES)
    reward: str | None = field(None, "reward name or module:function; default: the task's")
    data_sample: int = field(200, "training samples the run used (skipped: the held-out split follows them)")
    test_size: int = field(64, "held-out samples (built-in data)", at_least=1)
    global_seed: int = field(42, "seed of the built-in data")
    engine: str = field("vllm", "engine backend", one_of=tuple(BACKENDS))
    num_engines: int = field(1, "engines evaluating in parallel", at_least=1)
    in_process: bool = field(False, "one engine in this process, no Ray")
    device: str = field("auto", "cpu, cuda, or auto (cuda when --cuda_devices is given)", one_of=DEVICES)
    cuda_devices: str | None = field(None, "comma-separated GPU ids, e.g. 0,1: one engine per id")
    precision: str = field("auto", "model dtype in vLLM", one_of=PRECISIONS)
    max_tokens: int = field(1024, "most tokens per completion", at_least=1)
    max_model_len: int = field(MAX_MODEL_LEN, "longest prompt + completion, in tokens", at_least=1)
    output: str | None = field(None, "per-sample JSONL (default: <model>/eval.jsonl)")

    def __post_init__(self):
        if not self.model:
            bad("model", self.model, "name the checkpoint directory to evaluate")
        check_fields(self)
        self.check_devices()
        self.check_in_process()

    @property
    def reward_spec(self) -> str:
        return self.reward or self.task


def load_experiment(name: str) -> dict:
    """The settings of experiments/NAME.toml; unknown names and unknown keys are errors."""
    path = EXPERIMENTS_DIR / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml"))
        raise ValueError(f"--experiment {name!r}: no {path}; known experiments: {known}")
    settings = tomllib.loads(path.read_text())
    unknown = set(settings) - {f.name for f in dataclasses.fields(RunConfig)}
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
    return {"experiment": name, **settings}
