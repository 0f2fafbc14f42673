"""`make gpu-check`'s new sections, where they run without a GPU: the LoRA-shaped buffers have the
bytes the plan's LoRA term counts (its formula derived per slice, here from vLLM's layer layout), and
the bf16 ES-option section computes on CPU what it checks on CUDA."""

import pytest

from benchmarks.gpu_check import options_with_bf16_weights
from benchmarks.gpu_memory import lora_shaped_buffers
from esvllm.memory import ModelShape, plan
from esvllm.model_shapes import qwen25_config


@pytest.mark.parametrize("size", ["toy", "0.5B"])
def test_the_lora_shaped_buffers_hold_the_bytes_the_plan_counts(size):
    buffers = lora_shaped_buffers(size, slots=4, rank=8, device="meta")  # shapes only, nothing allocated
    planned = plan(ModelShape.from_config(qwen25_config(size)), 80 * 10**9, lora_slots=4, lora_rank=8).lora_bytes
    assert sum(t.numel() * t.element_size() for t in buffers) == planned


def test_the_bf16_options_section_passes_on_cpu_against_itself():
    for name, figures in options_with_bf16_weights("cpu").items():
        assert figures["perturb_within_one_bf16_rounding"] and figures["restore_exact"], name
        assert figures["restore_checksums_equal_cpu"], name
        assert figures["update_relative_error"] == 0.0, name


def test_the_loop_section_runs_in_its_own_process_and_reports_what_held():
    from benchmarks.gpu_loop import loop_in_a_new_process

    loop = loop_in_a_new_process("cpu", size="toy")  # on a GPU: the 0.5B shape in bf16
    assert loop["resumed_metrics_equal"] and loop["resumed_weights_bit_identical"] and loop["eval_equals_in_loop_eval"]
    assert loop["tensors_changed"] == loop["tensors"] and loop["checkpoints"][-1] == "iter_000003"
