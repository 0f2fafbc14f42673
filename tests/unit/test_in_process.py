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
