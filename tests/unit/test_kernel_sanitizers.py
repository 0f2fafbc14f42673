"""The CPU kernel's source under AddressSanitizer and UndefinedBehaviorSanitizer (the portable level,
and the avx2 level where this processor runs it): every entry point once (tests/c/kernel_driver.c),
no out-of-bounds access, uninitialised-shift or overflow report, and outputs equal to the reference."""

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import cpu_check, cpu_lib
from kernels import bits_to_normal_reference, philox_key, quantile_table

DRIVER = Path(__file__).parent.parent / "c" / "kernel_driver.c"
SANITIZE = ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
SHARDS = cpu_check.SHARDS  # the driver draws the same blocks, in this order


def sanitized_driver(level: str, tmp_path: Path) -> Path:
    compiler = cpu_lib.find_compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    flags = [f for f in cpu_lib.level_flags(level) if f not in ("-shared", "-fPIC")]
    out = tmp_path / f"driver-{level}"
    done = subprocess.run([compiler, *flags, *SANITIZE, str(cpu_lib.SOURCE), str(DRIVER), "-o", str(out), "-lm"],
                          capture_output=True, text=True)
    if done.returncode != 0 and "asan" in done.stderr.lower():
        pytest.skip(f"the compiler has no sanitizer runtime here: {done.stderr[-200:]}")
    assert done.returncode == 0, done.stderr
    return out


def expected_outputs(words: torch.Tensor, key: tuple[int, int]) -> bytes:
    f32 = lambda t: t.contiguous().numpy().astype(np.float32).tobytes()
    parts = [f32(bits_to_normal_reference(words))]
    for rows, width, row0, col0, stride in SHARDS:
        parts.append(f32(cpu_check.reference_block(key, rows, width, row0, col0, stride)))
    # as the driver computes it: a float32 product, rounded once
    master = (torch.tensor([i % 13 - 6 for i in range(5 * 37)], dtype=torch.float32) * torch.tensor(0.01)).view(5, 37)
    eps = cpu_check.reference_block(key, 5, 37, 0, 0, 37)
    parts += [f32(eps), f32(cpu_check.one_rounding_sum([(0.003, eps)], master))]
    terms = [(c, cpu_check.reference_block(((key[0] + d) & 0xFFFFFFFF, key[1]), 5, 37, 0, 0, 37))
             for d, c in enumerate([0.5, -0.25, 1e-3])]
    parts.append(f32(cpu_check.one_rounding_sum(terms, torch.zeros(5, 37))))
    raw = words.numpy().astype(np.uint32)
    for values, col0 in ((raw.view(np.int32).astype(np.int64), 3), (raw.view(np.int16).astype(np.int64), 5)):
        index = col0 + np.arange(values.size, dtype=np.int64)
        total, positional = int(values.sum()), int((values * (index % 7 + 1)).sum())
        parts.append(struct.pack("<4Q", *[w for v in (total, positional) for w in
                                          (v & 2**64 - 1, (v >> 64) & 2**64 - 1)]))
    return b"".join(parts)


@pytest.mark.parametrize("level", cpu_lib.LEVELS)
def test_the_kernel_source_runs_clean_under_the_sanitizers_and_computes_the_reference(level, tmp_path):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    if level not in cpu_lib.supported_levels(cpu_lib.find_compiler()):
        pytest.skip(f"this processor does not run the {level} level")
    driver = sanitized_driver(level, tmp_path)
    words = cpu_check.edge_words()
    key = philox_key(5, "model.embed_tokens.weight")
    (tmp_path / "table").write_bytes(np.array(quantile_table(), dtype=np.int32).tobytes())
    (tmp_path / "words").write_bytes(words.numpy().astype(np.uint32).tobytes())
    done = subprocess.run([str(driver), str(tmp_path / "table"), str(tmp_path / "words"), str(key[0]), str(key[1])],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout == expected_outputs(words, key)


def test_the_portable_level_builds_for_aarch64_and_computes_the_reference(tmp_path):
    """Graviton, Grace: the portable level cross-compiled for aarch64 and run under qemu (where the
    cross compiler and qemu-aarch64 are installed; on an aarch64 machine the tests above run natively)."""
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not (cross and qemu):
        pytest.skip("no aarch64 cross compiler and qemu-aarch64 here (apt: gcc-aarch64-linux-gnu qemu-user)")
    flags = [f for f in cpu_lib.COMMON_FLAGS if f not in ("-shared", "-fPIC")] + ["-DESVLLM_PORTABLE", "-static"]
    driver = tmp_path / "driver-aarch64"
    done = subprocess.run([cross, *flags, str(cpu_lib.SOURCE), str(DRIVER), "-o", str(driver), "-lm"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    words = cpu_check.edge_words()
    key = philox_key(5, "model.embed_tokens.weight")
    (tmp_path / "table").write_bytes(np.array(quantile_table(), dtype=np.int32).tobytes())
    (tmp_path / "words").write_bytes(words.numpy().astype(np.uint32).tobytes())
    ran = subprocess.run([qemu, str(driver), str(tmp_path / "table"), str(tmp_path / "words"), str(key[0]),
                          str(key[1])], capture_output=True, timeout=300)
    assert ran.returncode == 0, ran.stderr.decode()[-2000:]
    assert ran.stdout == expected_outputs(words, key)
