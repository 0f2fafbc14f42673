"""Bad configuration fails before any engine starts, with a message naming the value; --help is instant."""

import os
import subprocess
import sys

import pytest

from esvllm.machine import check_environment, count_gpus
from esvllm.run import main, resolve_config
from tests.helpers import FAKE


def fails_with(argv, *fragments):
    with pytest.raises(SystemExit) as info:
        main(argv)
    message = str(info.value.code)
    for fragment in fragments:
        assert fragment in message, message
    return message


# (flags, fragments of the message): each refused before any engine starts, by esvllm.train too.
BAD_CONFIGS = [
    (["--population_size", "1"], ["--population_size", "1"]),
    (["--sigma", "0"], ["--sigma", "0.0"]),
    (["--sigma", "-0.1"], ["--sigma", "-0.1"]),
    (["--sigma", "nan"], ["--sigma", "nan"]),
    (["--alpha", "inf"], ["--alpha", "inf"]),
    (["--reward", "no_such_reward"], ["no_such_reward", "countdown"]),
    (["--reward", "rewards.countdown:nothing"], ["rewards.countdown:nothing"]),
    (["--experiment", "no_such_experiment"], ["no_such_experiment", "demo"]),
    (["--data", "/nonexistent/countdown.json"], ["/nonexistent/countdown.json"]),
    (["--model_name", "/nonexistent/model"], ["/nonexistent/model"]),
    (["--device", "cpu", "--num_engines", "64"], ["--num_engines", "64"]),
    (["--cuda_devices", "a,b"], ["--cuda_devices", "a,b"]),
    (["--batch_size", "500", "--data_sample", "10"], ["--batch_size", "500"]),
    (["--noise_cache_mb", "-1"], ["--noise_cache_mb", "-1"]),
    (["--task", "no_such_task"], ["--task", "no_such_task", "countdown"]),
    (["--shaping", "ranks"], ["--shaping", "ranks", "centered_rank"]),
    (["--engine", "tensorrt"], ["--engine", "tensorrt", "vllm"]),
    (["--cuda_devices", "0,0"], ["--cuda_devices", "'0,0'", "twice"]),
    (["--cuda_devices", "-1"], ["--cuda_devices", ">= 0"]),
    (["--cuda_devices", "0,1,2", "--tensor_parallel_size", "2"], ["--cuda_devices", "multiple"]),
    (["--gpu_memory_utilization", "1.5"], ["--gpu_memory_utilization", "1.5"]),
    (["--engine", "fake", "--tensor_parallel_size", "2"], ["--tensor_parallel_size", "only the vllm engine shards"]),
    (["--optimizer", "lion"], ["--optimizer", "'lion'", "sgd, momentum, adam"]),
]


@pytest.mark.parametrize("argv, fragments", BAD_CONFIGS)
def test_bad_config_fails_before_any_engine_starts(argv, fragments, monkeypatch):
    import engines.pool

    def no_engines(*args, **kwargs):
        raise AssertionError("an engine was started")

    monkeypatch.setattr(engines.pool.EnginePool, "start", no_engines)
    fails_with(argv, *fragments)


def test_flags_override_the_experiment_file_which_overrides_defaults():
    config = resolve_config(["--experiment", "demo", "--sigma", "0.123"])
    assert config.sigma == 0.123  # flag
    assert config.task == "addition" and config.num_engines == 2  # demo.toml
    assert config.temperature == 0.0  # default (greedy)


def test_paper_flag_names_are_accepted():
    config = resolve_config(["--model_name", "tiny", "--population_size", "4", "--num_iterations", "3",
                             "--experiment_dir", "/tmp/x", "--global_seed", "5", "--data_sample", "8",
                             "--precision", "float32", "--num_engines", "1", "--verbose"])
    assert (config.output_dir, config.global_seed, config.precision, config.verbose) == ("/tmp/x", 5, "float32", True)
    check_environment(config)


def test_help_answers_without_importing_torch_vllm_or_ray():
    code = ("import sys, runpy; sys.argv=['esvllm.run','--help']\n"
            "try: runpy.run_module('esvllm.run', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in ('torch','vllm','ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--population_size" in out and out.strip().endswith("[]")


@pytest.mark.skipif(count_gpus() > 0, reason="this machine has a GPU")
def test_cuda_devices_on_a_machine_without_cuda_is_refused():
    fails_with(["--cuda_devices", "0,1"], "--cuda_devices", "0,1", "no CUDA GPU")


def test_a_bool_a_preset_turns_on_can_be_turned_off():
    config = resolve_config(["--eval_every", "2", "--save_best", "--no-save_best"])
    assert config.save_best is False
    assert resolve_config(["--eval_every", "2", "--save_best"]).save_best is True


@pytest.mark.parametrize("argv, fragment", [(["--model", "tiny", "--task", "nope"], "--task 'nope'"),
                                             (["--model", "tiny", "--max_tokens", "0"], "--max_tokens 0"),
                                             (["--task", "countdown"], "--model None")])
def test_the_eval_cli_checks_its_flags_like_the_training_cli(argv, fragment):
    from esvllm.eval import main as evaluate

    with pytest.raises(SystemExit) as info:
        evaluate(argv)
    assert fragment in str(info.value.code)


def test_gpu_ids_that_do_not_exist_are_named_before_start(monkeypatch):
    import esvllm.machine

    monkeypatch.setattr(esvllm.machine, "count_gpus", lambda: 2)
    fails_with(["--cuda_devices", "1,2,3"], "--cuda_devices", "[2, 3] do not exist", "0..1")


class RayStarted(Exception):
    """Raised by the patched ray.init: what it was given is recorded, nothing starts."""


@pytest.fixture
def recorded_ray(monkeypatch):
    """ray.init patched to record the GPUs a private Ray would see, on a machine with 8 GPUs."""
    import ray

    seen = {}

    def init(*args, **kwargs):
        seen.update(visible=os.environ.get("CUDA_VISIBLE_DEVICES"), num_gpus=kwargs.get("num_gpus"),
                    address=kwargs.get("address"))
        raise RayStarted

    monkeypatch.setattr("esvllm.machine.count_gpus", lambda: 8)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return seen


def test_the_cuda_devices_given_to_esvllm_run_are_the_gpus_its_ray_sees(recorded_ray, tmp_path):
    from esvllm.run import main

    with pytest.raises(RayStarted):
        main(["--model_name", "tiny", "--task", "conciseness", "--cuda_devices", "4,5", "--engine", "fake", "--max_tokens", "12", "--gpu_memory_gb", "80",
              "--population_size", "4", "--num_iterations", "1", "--output_dir", str(tmp_path)])
    assert recorded_ray == {"visible": "4,5", "num_gpus": 2, "address": "local"}


def test_the_cuda_devices_given_to_esvllm_eval_are_the_gpus_its_ray_sees(recorded_ray, tmp_path):
    from esvllm.eval import main

    with pytest.raises(RayStarted):
        main(["--model", "tiny", "--task", "conciseness", "--cuda_devices", "6,7", "--engine", "fake", "--max_tokens", "12",
              "--num_engines", "2", "--output", str(tmp_path / "eval.jsonl")])
    assert recorded_ray == {"visible": "6,7", "num_gpus": 2, "address": "local"}


def test_a_run_joining_a_cluster_may_want_more_gpus_than_this_node_has(recorded_ray, tmp_path):
    """Four nodes of 8 GPUs: 32 engines from the head node, which has 8 (the multi-node recipe)."""
    from esvllm.run import main

    with pytest.raises(RayStarted):
        main(["--model_name", "tiny", "--task", "conciseness", "--cuda_devices", ",".join(map(str, range(32))),
              "--ray_address", "10.0.0.1:6379", "--engine", "fake", "--max_tokens", "12", "--gpu_memory_gb", "80",
              "--population_size", "32", "--num_iterations", "1", "--output_dir", str(tmp_path)])
    assert recorded_ray == {"visible": None, "num_gpus": None, "address": "10.0.0.1:6379"}
    with pytest.raises(SystemExit, match="GPUs \\[8, 9"):  # without the cluster the same ids are refused
        main(["--model_name", "tiny", "--task", "conciseness", "--cuda_devices", ",".join(map(str, range(32))),
              "--engine", "fake", "--max_tokens", "12", "--population_size", "32", "--output_dir", str(tmp_path)])


def test_esvllm_eval_starts_its_engines_without_an_es_state(monkeypatch, tmp_path):
    """Evaluation only generates: no fp32 master (a 7B one is 28 GiB), the GPU's memory is vLLM's."""
    from engines.pool import EnginePool
    from esvllm.eval import main

    seen = {}

    def start(model_path, options, ray_address=None):
        seen["options"] = options
        raise RayStarted

    monkeypatch.setattr(EnginePool, "start", start)
    with pytest.raises(RayStarted):
        main(["--model", "tiny", "--task", "conciseness", "--max_tokens", "12", "--output", str(tmp_path / "e.jsonl")])
    assert seen["options"].es_state is False and seen["options"].backend == "vllm"


def test_an_unwritable_output_directory_is_reported_before_start(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    with pytest.raises(SystemExit) as info:
        main(FAKE + ["--output_dir", str(blocked / "runs")])
    assert "file-not-dir" in str(info.value.code) and "cannot write" in str(info.value.code)


def test_the_help_lists_each_flags_choices_from_the_same_tuple_the_check_reads():
    from esvllm.config import RunConfig
    from esvllm.es import SHAPINGS

    out = subprocess.run([sys.executable, "-m", "esvllm.run", "--help"], capture_output=True, text=True, check=True).stdout
    assert f"one of: {', '.join(SHAPINGS)}" in " ".join(out.split())  # the help, whatever its wrapping
    with pytest.raises(ValueError, match=f"use one of {', '.join(SHAPINGS)}"):
        RunConfig(shaping="ranks")


def test_run_and_evaluation_share_one_max_model_len_that_holds_the_default_completion():
    from esvllm.config import EvalConfig, RunConfig

    run, evaluation = RunConfig(), EvalConfig(model="tiny")
    assert run.max_model_len == evaluation.max_model_len > run.max_tokens == evaluation.max_tokens
