"""The CPU kernels (kernels/noise_cpu.c), each named level this processor runs: the table map equals
the reference at every edge, shards and counters are the reference's, the fused perturb and update
round as stated; the load-time check refuses a wrong build and the next level down is used; the
cache never loads a build made by another compiler or for another level."""

import logging
import re
from pathlib import Path

import pytest
import torch

from kernels import cpu, cpu_check, cpu_lib
from kernels import Slice, bits_to_normal_reference, noise, noise_reference, philox_key

NAME = "model.layers.0.mlp.down_proj.weight"


def compiler() -> str:
    found = cpu_lib.find_compiler()
    if found is None:
        pytest.skip("no C compiler: only the torch reference runs here")
    return found


def runs_here(level: str) -> bool:
    return level in cpu_lib.supported_levels(compiler())


@pytest.fixture(params=cpu_lib.LEVELS)
def lib(request):
    if not runs_here(request.param):
        pytest.skip(f"this processor does not run the {request.param} level")
    return cpu_lib.build(compiler(), request.param)


def edge_bits() -> torch.Tensor:
    """32-bit patterns whose t = 0x7FFFFFFF - (u & 0x7FFFFFFF) is every value below 2**17, each power of
    two and its neighbours, and random values; with both signs."""
    generator = torch.Generator().manual_seed(0)
    powers = [(1 << k) + d for k in range(31) for d in range(-3, 4) if 0 <= (1 << k) + d < 2**31]
    t = torch.cat([torch.arange(2**17), torch.tensor(powers), torch.randint(0, 2**31, (200_000,), generator=generator),
                   torch.tensor([2**31 - 1])])
    u = 0x7FFFFFFF - t
    return torch.cat([u, u | 0x80000000])


def fill(lib, rows, width, key, row0, col0, stride) -> torch.Tensor:
    out = torch.empty(rows, width)
    cpu_lib.fill_rows(out, key, row0, col0, stride, lib=lib)
    return out


def test_the_table_map_equals_the_reference_at_every_edge(lib):
    u = edge_bits()
    assert torch.equal(cpu_lib.bits_to_normal(lib, u).view(torch.int32), bits_to_normal_reference(u).view(torch.int32))


SHAPES = [(1, 24_001, 0, 0, 0), (7, 13, 3, 5, 40), (1, 3, 0, 1, 0), (5, 1001, 2, 0, 1001), (3, 300, 1, 77, 1000)]


@pytest.mark.parametrize("rows, width, row0, col0, stride", SHAPES)
def test_every_block_and_shard_is_the_reference_noise(lib, rows, width, row0, col0, stride):
    index = (torch.arange(rows)[:, None] + row0) * stride + col0 + torch.arange(width)[None, :]
    want = noise_reference(4, NAME, index)
    assert torch.equal(fill(lib, rows, width, philox_key(4, NAME), row0, col0, stride), want)


def test_blocks_past_two_to_the_32_carry_into_the_counters_high_word(lib):
    # Element 2**34 - 8 is block 2**32 - 2: a batch from there crosses into the high word.
    start = 2**34 - 40
    want = noise_reference(1, NAME, torch.arange(start, start + 300))
    assert torch.equal(fill(lib, 1, 300, philox_key(1, NAME), 0, start, 0).view(-1), want)


def test_the_fused_perturb_draws_the_noise_and_writes_master_plus_sigma_eps_with_one_rounding(lib):
    shape, sigma = (37, 129), 0.003
    generator = torch.Generator().manual_seed(2)
    master = torch.randn(shape, generator=generator) * 0.05
    eps_want = noise(9, NAME, shape)
    s32 = torch.tensor(sigma, dtype=torch.float32).double()
    # one rounding: the product of two floats is exact in float64, the sum rounds once more there,
    # then once to float32 (a double rounding only at an exact float32 midpoint: not among these)
    want = (master.double() + s32 * eps_want.double()).float()
    eps, dst = torch.empty(shape), torch.empty(shape)
    cpu_lib.perturb_rows(eps, master, dst, sigma, philox_key(9, NAME), 0, 0, shape[1], lib=lib)
    assert torch.equal(eps, eps_want)
    assert torch.equal(dst, want)


def test_the_fused_update_adds_each_members_term_in_order_with_one_rounding(lib):
    shape = (23, 301)
    seeds, coeffs = [11, 12, 13, 14, 15], [0.5, -0.25, 1e-3, 3.0, -7e-4]
    eps = {s: noise(s, NAME, shape) for s in seeds}
    want = torch.zeros(shape)
    for s, c in zip(seeds, coeffs):
        c32 = torch.tensor(c, dtype=torch.float32).double()
        want = (want.double() + c32 * eps[s].double()).float()
    kept_seeds = {12, 14}  # these two read from kept buffers, the others drawn
    terms = [(philox_key(s, NAME), c, eps[s] if s in kept_seeds else None) for s, c in zip(seeds, coeffs)]
    delta = torch.full(shape, float("nan"))
    cpu_lib.combine_rows(delta, terms, 0, 0, shape[1], lib=lib)
    assert torch.equal(delta, want)


def test_every_level_passes_the_load_time_check(lib):
    assert cpu_check.check_kernel(lib) is None


def test_the_update_through_the_wrapper_matches_the_torch_code_it_replaces():
    shape = (64, 96)
    seeds, coeffs = [1, 2, 3], [0.1, -0.2, 0.3]
    delta = torch.empty(shape)
    terms = [(philox_key(s, NAME), c, None) for s, c in zip(seeds, coeffs)]
    cpu.combine(delta, terms, Slice(0, 0, shape[1]))
    torch_sum = torch.zeros(shape)
    for s, c in zip(seeds, coeffs):
        torch_sum.add_(noise(s, NAME, shape), alpha=c)
    torch.testing.assert_close(delta, torch_sum, rtol=0, atol=1e-6)


@pytest.fixture
def fresh_kernel():
    """cpu.kernel() chosen anew in this test, and again for the tests after it."""
    cpu.kernel.cache_clear()
    yield
    cpu.kernel.cache_clear()


@pytest.mark.parametrize("faulty", cpu_lib.LEVELS)
def test_a_wrong_build_is_refused_and_the_next_level_down_is_used_with_one_warning(faulty, monkeypatch, caplog,
                                                                                 fresh_kernel):
    if not runs_here(faulty):
        pytest.skip(f"this processor does not run the {faulty} level")
    monkeypatch.setenv(cpu.LEVEL_ENV, faulty)
    monkeypatch.setenv(cpu_lib.FAULT_ENV, faulty)
    assert cpu_check.check_kernel(cpu_lib.build(compiler(), faulty)) is not None  # the check sees the fault
    with caplog.at_level(logging.WARNING, logger="kernels.cpu"):
        chosen = cpu.kernel()
    below = cpu_lib.LEVELS[cpu_lib.LEVELS.index(faulty) + 1:] + (cpu.REFERENCE,)
    assert chosen.level == below[0] and [name for name, _ in chosen.refused] == [faulty]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert cpu_lib.cpu_model() in warning and f"level {faulty} refused" in warning
    assert f"using level {below[0]}" in warning
    assert cpu.describe()["cpu_kernel_refused"] == {faulty: chosen.refused[0][1]}
    x = noise(3, NAME, (50, 77))  # the level in use draws the reference
    assert torch.equal(x, noise_reference(3, NAME, torch.arange(50 * 77)).view(50, 77))


def test_the_cap_selects_each_level_and_torch_at_the_bottom(monkeypatch, fresh_kernel):
    for level in (*cpu_lib.LEVELS, cpu.REFERENCE):
        if level in cpu_lib.LEVELS and not runs_here(level):
            continue
        monkeypatch.setenv(cpu.LEVEL_ENV, level)
        cpu.kernel.cache_clear()
        assert cpu.kernel().level == level
        assert (cpu.library() is None) == (level == cpu.REFERENCE)
    monkeypatch.setenv(cpu.LEVEL_ENV, "native")
    cpu.kernel.cache_clear()
    with pytest.raises(ValueError, match="ESVLLM_CPU_KERNEL='native'.*avx2, portable, torch"):
        cpu.kernel()


def test_the_cache_key_holds_the_sources_the_compiler_identity_and_the_level(monkeypatch, tmp_path):
    monkeypatch.setenv("ESVLLM_CACHE", str(tmp_path))
    cpu_lib.build(compiler(), "portable")
    monkeypatch.setattr(cpu_lib, "compiler_identity", lambda cc: "/opt/other-cc\nother 1.0\nx86_64-linux-gnu")
    cpu_lib.build(compiler(), "portable")
    cpu_lib.build(compiler(), "portable", ("-DESVLLM_UNUSED=1",))  # other flags
    header = tmp_path / "noise_cpu_avx2.h"  # the AVX2 header changed (the portable build does not include it)
    header.write_text(cpu_lib.HEADERS[0].read_text() + "\n/* changed */\n")
    monkeypatch.setattr(cpu_lib, "HEADERS", (header,))
    cpu_lib.build(compiler(), "portable", ("-DESVLLM_UNUSED=1",))
    built = sorted(p.name for p in (tmp_path / "kernels").glob("*.so"))
    assert len(built) == 4 and all(name.startswith("noise_cpu-portable-") for name in built)


def test_the_compiler_identity_names_its_path_version_and_target():
    identity = cpu_lib.compiler_identity(compiler())
    path, version, target = identity.split("\n")[0], identity.split("\n")[1], identity.split("\n")[-1]
    assert Path(path).is_file() and re.search(r"\d+\.\d+", version) and "-" in target


def test_no_level_is_compiled_for_the_machine_that_builds_it():
    for level in cpu_lib.LEVELS:
        flags = cpu_lib.level_flags(level)
        assert not any(f in ("-march=native", "-mtune=native", "-mcpu=native") for f in flags), level
    assert "-DESVLLM_PORTABLE" in cpu_lib.level_flags("portable")


def avx512vl_here() -> bool:
    try:
        return " avx512vl" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def test_the_avx2_source_is_right_when_a_compiler_adds_avx512(monkeypatch, tmp_path):
    """-march=native on AVX-512 processors: GCC 12 miscompiled an inverted blend mask there. The
    source no longer inverts a mask; built as an AVX-512 compiler would build it, it passes the check."""
    if not (cpu_lib.is_x86() and avx512vl_here()):
        pytest.skip("needs an AVX-512VL processor to run the AVX-512 build")
    monkeypatch.setenv("ESVLLM_CACHE", str(tmp_path))
    lib = cpu_lib.build(compiler(), "avx2", ("-march=x86-64-v4",))
    assert cpu_check.check_kernel(lib) is None
    u = edge_bits()
    assert torch.equal(cpu_lib.bits_to_normal(lib, u).view(torch.int32), bits_to_normal_reference(u).view(torch.int32))
