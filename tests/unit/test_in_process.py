"""In-process mode (--in_process): the whole loop with one engine in the driver's process and no Ray,
as `make gpu-check` runs it on a GPU machine that has neither Ray nor vLLM (benchmarks.gpu_loop)."""

import json
import subprocess
import sys

import pytest

from esvllm.config import RunConfig, EvalConfig

# Run in a fresh interpreter where importing any of these fails, as on the lent GPU machine.
WITHOUT = ("ray", "vllm", "tensorboard", "matplotlib", "psutil")
SCRIPT = f"""
import json, sys
for name in {WITHOUT!r}:
    sys.modules[name] = None  # `import {{name}}` now raises ImportError
from benchmarks.gpu_loop import check_loop
from esvllm.models import resolve_model
result = check_loop(resolve_model("tiny"), "cpu", sys.argv[1])
print("RESULT " + json.dumps(result))
"""


def test_the_loop_runs_checkpoints_resumes_exports_and_evaluates_without_ray_or_vllm(tmp_path, tiny_model):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["checkpoints"] == ["iter_000001", "iter_000002", "iter_000003"]
    assert result["resumed_metrics_equal"] and result["resumed_weights_bit_identical"]
    assert result["tensors_changed"] == result["tensors"]  # every tensor of final/ moved away from the base
    assert result["eval_equals_in_loop_eval"], result
    assert "no TensorBoard logs" in out.stderr  # said, and the run went on with metrics.jsonl
    assert "curves: not drawn" in out.stdout


@pytest.mark.parametrize("config, flag, value", [
    (dict(num_engines=2), "num_engines", 2),
    (dict(cuda_devices="0,1"), "cuda_devices", "0,1"),
    (dict(ray_address="10.0.0.1:6379"), "ray_address", "10.0.0.1:6379"),
    (dict(cuda_devices="0,1", tensor_parallel_size=2), "cuda_devices", "0,1"),
])
def test_in_process_mode_refuses_a_second_engine_or_a_cluster_naming_the_flag(config, flag, value):
    with pytest.raises(ValueError, match=f"--{flag} {value!r}.*--in_process"):
        RunConfig(in_process=True, **config)
    if flag in ("num_engines", "cuda_devices"):
        with pytest.raises(ValueError, match=f"--{flag} {value!r}.*--in_process"):
            EvalConfig(model="tiny", in_process=True, **{k: v for k, v in config.items() if k != "tensor_parallel_size"})


def test_the_engine_is_created_in_the_actors_environment_and_this_process_gets_its_own_back(monkeypatch, tiny_model):
    import dataclasses
    import os

    import engines.local
    from engines.fake import FakeEngineActor
    from tests.helpers import engine_options

    seen = {}

    class Recording(FakeEngineActor):
        def __init__(self, *args):
            seen.update(os.environ)
            super().__init__(*args)

    monkeypatch.setattr(engines.local, "actor_class", lambda backend: Recording)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the driver's own value
    before = dict(os.environ)
    options = dataclasses.replace(engine_options(), backend="fake", in_process=True)
    pool = engines.local.LocalPool.start(tiny_model, options)
    pool.shutdown()
    assert seen["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and seen["VLLM_CPU_OMP_THREADS_BIND"]  # as an actor's
    assert dict(os.environ) == before


def test_a_dry_run_in_process_names_this_process_as_the_one_that_sees_the_gpu(capsys):
    from esvllm.run import main

    with pytest.raises(SystemExit) as planned:
        main(["--model_name", "tiny", "--task", "conciseness", "--in_process", "--cuda_devices", "3",
              "--gpu_memory_gb", "80", "--dry_run"])
    assert planned.value.code == 0
    assert "GPUs: 3 (CUDA_VISIBLE_DEVICES of this process, --in_process): 1 engine(s)" in capsys.readouterr().out
