"""The CPU kernels (esvllm/noise_cpu.c): the vector (AVX2) and portable builds give the same bits,
the table map equals the reference at every edge, and the fused perturb and update round as stated."""

import ctypes
import shutil

import pytest
import torch

from esvllm import noise_cpu
from esvllm.noise import bits_to_normal_reference, noise, noise_reference, philox_key

NAME = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def builds():
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    # Without -march=native the build targets the baseline x86-64 (or any other) processor: no AVX2.
    portable = noise_cpu.build(compiler, [f for f in noise_cpu.FLAGS if f != "-march=native"])
    return {"native": noise_cpu.library(), "portable": portable}


def edge_bits() -> torch.Tensor:
    """32-bit patterns whose t = 0x7FFFFFFF - (u & 0x7FFFFFFF) is every value below 2**17, each power of
    two and its neighbours, and random values; with both signs."""
    generator = torch.Generator().manual_seed(0)
    powers = [(1 << k) + d for k in range(31) for d in range(-3, 4) if 0 <= (1 << k) + d < 2**31]
    t = torch.cat([torch.arange(2**17), torch.tensor(powers), torch.randint(0, 2**31, (200_000,), generator=generator),
                   torch.tensor([2**31 - 1])])
    u = 0x7FFFFFFF - t
    return torch.cat([u, u | 0x80000000])


def to_normal(lib, u: torch.Tensor) -> torch.Tensor:
    words = torch.from_numpy(u.numpy().astype("uint32").view("int32"))
    out = torch.empty(u.numel())
    lib.bits_to_normal(words.data_ptr(), u.numel(), noise_cpu.table_tensor().data_ptr(), out.data_ptr())
    return out


def fill(lib, rows, width, key, row0, col0, stride) -> torch.Tensor:
    out = torch.empty(rows, width)
    lib.fill_rows(out.data_ptr(), rows, width, noise_cpu.table_tensor().data_ptr(), *key, row0, col0, stride)
    return out


def test_the_table_map_equals_the_reference_at_every_edge_in_both_builds(builds):
    u = edge_bits()
    reference = bits_to_normal_reference(u)
    for name, lib in builds.items():
        assert torch.equal(to_normal(lib, u).view(torch.int32), reference.view(torch.int32)), name


SHAPES = [(1, 24_001, 0, 0, 0), (7, 13, 3, 5, 40), (1, 3, 0, 1, 0), (5, 1001, 2, 0, 1001), (3, 300, 1, 77, 1000)]


@pytest.mark.parametrize("rows, width, row0, col0, stride", SHAPES)
def test_the_vector_and_portable_builds_draw_the_same_bits(builds, rows, width, row0, col0, stride):
    key = philox_key(4, NAME)
    native, portable = (fill(builds[b], rows, width, key, row0, col0, stride) for b in ("native", "portable"))
    assert torch.equal(native.view(torch.int32), portable.view(torch.int32))


def test_blocks_past_two_to_the_32_carry_into_the_counters_high_word(builds):
    # Element 2**34 - 8 is block 2**32 - 2: a batch from there crosses into the high word.
    start = 2**34 - 40
    got = {b: fill(builds[b], 1, 300, philox_key(1, NAME), 0, start, 0) for b in builds}
    want = noise_reference(1, NAME, torch.arange(start, start + 300))
    for name, out in got.items():
        assert torch.equal(out.view(-1), want), name


def test_the_fused_perturb_draws_the_noise_and_writes_master_plus_sigma_eps_with_one_rounding(builds):
    shape, sigma = (37, 129), 0.003
    generator = torch.Generator().manual_seed(2)
    master = torch.randn(shape, generator=generator) * 0.05
    eps_want = noise(9, NAME, shape)
    s32 = torch.tensor(sigma, dtype=torch.float32).double()
    # one rounding: the product of two floats is exact in float64, the sum rounds once more there,
    # then once to float32 (a double rounding only at an exact float32 midpoint: not among these)
    want = (master.double() + s32 * eps_want.double()).float()
    for name, lib in builds.items():
        eps, dst = torch.empty(shape), torch.empty(shape)
        lib.perturb_rows(eps.data_ptr(), master.data_ptr(), dst.data_ptr(), sigma, *shape,
                         noise_cpu.table_tensor().data_ptr(), *philox_key(9, NAME), 0, 0, shape[1])
        assert torch.equal(eps, eps_want), name
        assert torch.equal(dst, want), name


def test_the_fused_update_adds_each_members_term_in_order_with_one_rounding(builds):
    shape = (23, 301)
    seeds, coeffs = [11, 12, 13, 14, 15], [0.5, -0.25, 1e-3, 3.0, -7e-4]
    eps = {s: noise(s, NAME, shape) for s in seeds}
    want = torch.zeros(shape)
    for s, c in zip(seeds, coeffs):
        c32 = torch.tensor(c, dtype=torch.float32).double()
        want = (want.double() + c32 * eps[s].double()).float()
    kept_seeds = {12, 14}  # these two read from kept buffers, the others drawn
    n = len(seeds)
    keys = (ctypes.c_uint32 * (2 * n))(*[w for s in seeds for w in philox_key(s, NAME)])
    c_coeffs = (ctypes.c_float * n)(*coeffs)
    kept = (ctypes.c_void_p * n)(*[eps[s].data_ptr() if s in kept_seeds else None for s in seeds])
    for name, lib in builds.items():
        delta = torch.full(shape, float("nan"))
        lib.combine_rows(delta.data_ptr(), *shape, noise_cpu.table_tensor().data_ptr(), n, keys, c_coeffs, kept,
                         0, 0, shape[1])
        assert torch.equal(delta, want), name


def test_the_update_through_the_wrapper_matches_the_torch_code_it_replaces():
    shape = (64, 96)
    seeds, coeffs = [1, 2, 3], [0.1, -0.2, 0.3]
    delta = torch.empty(shape)
    terms = [(philox_key(s, NAME), c, None) for s, c in zip(seeds, coeffs)]
    assert noise_cpu.combine_rows(delta, terms, 0, 0, shape[1])
    torch_sum = torch.zeros(shape)
    for s, c in zip(seeds, coeffs):
        torch_sum.add_(noise(s, NAME, shape), alpha=c)
    torch.testing.assert_close(delta, torch_sum, rtol=0, atol=1e-6)
