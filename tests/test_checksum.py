"""The engines' weight checksum: the C kernel and the torch code compute the definition exactly."""

import pytest
import torch

from engines.es_state import ESState, Slice
from esvllm.noise_cpu import checksum_rows


def definition(ints: torch.Tensor, row0: int, col0: int, row_stride: int) -> tuple[int, int]:
    """sum v and sum v * (i % 7 + 1), i = (row0 + r) * row_stride + col0 + c, in Python integers."""
    total = positional = 0
    for r, row in enumerate(ints.tolist()):
        for c, v in enumerate(row):
            total += v
            positional += v * (((row0 + r) * row_stride + col0 + c) % 7 + 1)
    return total, positional


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16])
@pytest.mark.parametrize("where", [(0, 0, 0), (0, 0, 37), (5, 3, 40), (2, 11, 13)])
def test_the_c_kernel_and_the_torch_code_compute_the_definition(dtype, where):
    info = torch.iinfo(dtype)
    ints = torch.randint(info.min, info.max, (9, 37), dtype=dtype, generator=torch.Generator().manual_seed(3))
    ints[0, 0], ints[1, 1] = info.min, info.max  # the extremes
    expected = definition(ints, *where)
    assert checksum_rows(ints, *where) == expected
    assert ESState._checksum_torch(ints, Slice(*where)) == expected


def test_the_c_kernel_sums_exactly_past_its_int64_chunk():
    # 2**24 + 9 elements at the largest int32 value: the chunk's int64 sums roll into 128 bits.
    ints = torch.full((1, 2**24 + 9), torch.iinfo(torch.int32).max, dtype=torch.int32)
    ints[0, -3:] = torch.iinfo(torch.int32).min
    assert checksum_rows(ints, 0, 0, 0) == ESState._checksum_torch(ints, Slice(0, 0, 0))


def test_an_es_state_reports_the_same_checksum_with_either_code(monkeypatch, cpu_kernel):
    master = {"a": torch.randn(64, 48), "b": torch.randn(7).to(torch.bfloat16)}
    state = ESState(master, lambda write: None, None)
    fast = state.checksum()
    monkeypatch.setattr("esvllm.noise_cpu.checksum_rows", lambda *args: None)  # as without a C compiler
    assert state.checksum() == fast
    master["a"][3, 5] += 1e-3  # and it sees a change
    assert state.checksum() != fast
