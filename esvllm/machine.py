"""Checks that need the machine (data files, GPUs, the model path, the reward's import, a writable
output directory), made after the config is valid and before any engine starts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

from engines.architectures import TESTED_ARCHITECTURES, architecture_problem, is_moe
from esvllm.config import RunConfig

logger = logging.getLogger(__name__)


def check_environment(config: RunConfig) -> None:
    """Checks that need the machine (data files, GPUs, model path, reward import); no engine starts."""
    from esvllm.models import BUILTIN_MODELS, resolve_model  # light: torch loads only to build a model

    if config.model_name not in BUILTIN_MODELS:
        model_config = check_architecture(resolve_model(config.model_name))
    else:
        model_config = {"architectures": [TESTED_ARCHITECTURES[BUILTIN_MODELS[config.model_name].family]]}
    check_moe_options(model_config, config)
    for flag, spec in [("data", config.data)] + [("eval_data", s.partition("=")[2] or s) for s in config.eval_data or []]:
        if spec and not Path(spec).expanduser().exists() and not Path(spec.rsplit(":", 1)[0]).expanduser().exists():
            raise FileNotFoundError(f"--{flag} {spec!r}: no such file or directory")
    from rewards import portable, resolve_reward

    resolve_reward(config.reward_spec)
    if config.reward_timeout:  # its worker processes get it by pickling: a closure over a lock cannot go
        portable(config.reward_spec)
    if not config.dry_run:
        check_writable(Path(config.resume) if config.resume else Path(config.output_dir))
    if config.dry_run and config.gpu_memory_gb:  # planning for GPUs this machine may not have
        return
    if config.ray_address:  # the cluster's GPUs and cores, not this node's: Ray places the engines, and
        return           # a placement it cannot make names the cluster's resources (engines.pool)
    if config.resolved_device == "cuda":
        check_gpu_ids(config.cuda_devices, config.gpu_ids or list(range(config.num_engines * config.tensor_parallel_size)))
    else:
        cores = len(os.sched_getaffinity(0))
        needed = config.num_engines * config.tensor_parallel_size
        if needed > cores:
            raise ValueError(f"--num_engines {config.num_engines} x --tensor_parallel_size {config.tensor_parallel_size}: "
                             f"{needed} cores wanted, {cores} here")


def check_architecture(model_dir: str) -> dict:
    """Refuse a model ES cannot perturb (mixture-of-experts, not a causal LM) before anything starts;
    warn about a dense architecture outside the tested families (the engines then check that every
    vLLM parameter maps to an HF tensor, and refuse at start if one does not)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    problem = architecture_problem(config)
    if problem:
        raise ValueError(f"--model_name {model_dir}: {problem}")
    name = (config.get("architectures") or [config.get("model_type", "?")])[0]
    if name not in TESTED_ARCHITECTURES.values():
        logger.warning("%s is not among the tested families (%s): the engines refuse it at start if any of its "
                       "parameters maps to no HF tensor", name, ", ".join(TESTED_ARCHITECTURES.values()))
    return config


def check_moe_options(model_config: dict, config: RunConfig) -> None:
    """What a mixture-of-experts model cannot do yet, refused before anything starts."""
    if not is_moe(model_config):
        return
    name = (model_config.get("architectures") or ["?"])[0]
    if config.perturbation == "lowrank":
        raise ValueError(f"--perturbation lowrank: {name} is a mixture-of-experts model; low-rank members are LoRA "
                         "adapters, and vLLM serves LoRA on fused experts only through its Triton MoE kernel, which "
                         "its CPU build cannot run, so it is not built or tested here: use --perturbation full")
    if config.engine == "hf":
        raise ValueError(f"--engine hf: transformers holds {name}'s experts fused, in tensors other than its "
                         "checkpoint's, which the HF backend does not map: use --engine vllm")


def check_gpu_ids(cuda_devices, wanted: list[int]) -> None:
    """The GPUs a run or an evaluation wants exist on this machine (nvidia-smi's ids)."""
    available = count_gpus()
    if available == 0:
        raise ValueError(f"--cuda_devices {cuda_devices!r}: this machine has no CUDA GPU; "
                         "use --device cpu --num_engines N")
    missing = [g for g in wanted if g >= available]
    if missing:
        raise ValueError(f"--cuda_devices {cuda_devices!r}: GPUs {missing} do not exist "
                         f"({available} here: ids 0..{available - 1})")


def count_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def check_writable(directory: Path) -> None:
    """Fail now, not at the first checkpoint, when runs cannot be written under `directory`."""
    probe = directory / f".esvllm-write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"--output_dir {str(directory)!r}: cannot write there ({exc.strerror}); "
                              "choose a writable directory with free space") from None
