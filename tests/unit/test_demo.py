"""The demo's base model and its held-out evaluation records."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from esvllm.models import BUILTIN_MODELS, build_model, write_checkpoint
from esvllm.pretrain import Recipe

SHORT = dataclasses.replace(BUILTIN_MODELS["adder"], pretrain=Recipe(steps=15))  # the adder's recipe, 15 steps


def in_this_process(monkeypatch):
    """Write built-in models with this process's torch (the cache and the lock are tested here, not the
    pinned writer: test_a_build_writes_the_same_bits_whatever_kernels_the_environment_asks_torch_for)."""
    import esvllm.model_build as model_build

    monkeypatch.setattr(model_build, "write_reproducibly", write_checkpoint)
    return write_checkpoint


def test_a_cached_build_is_reused_and_a_half_written_one_is_never_used(tmp_path, monkeypatch):
    import esvllm.models as models

    monkeypatch.setitem(models.BUILTIN_MODELS, "short-adder", SHORT)
    in_this_process(monkeypatch)
    leftover = tmp_path / f".short-adder-{SHORT.digest()}-crashed"  # a build killed half-way
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    path = build_model("short-adder", tmp_path)
    assert (path / "model.safetensors").is_file() and path.name.startswith("short-adder-")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert build_model("short-adder", tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_two_builders_at_once_pretrain_the_model_once_and_both_get_it(tmp_path, monkeypatch):
    """Two test workers or two runs asking for an uncached model: one builds, the other says it waits
    and waits."""
    import io
    import sys
    import threading
    import time

    import esvllm.model_build as model_build
    import esvllm.models as models

    monkeypatch.setitem(models.BUILTIN_MODELS, "short-adder", SHORT)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    waiting = "waiting for another process that is building short-adder"
    builds = []
    write = in_this_process(monkeypatch)

    def slow_write(spec, directory):
        builds.append(directory)
        deadline = time.monotonic() + 30
        while waiting not in stderr.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)  # the first builder writes once the second is waiting for it
        write(spec, directory)

    monkeypatch.setattr(model_build, "write_reproducibly", slow_write)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(build_model("short-adder", tmp_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and len(paths) == 2 and paths[0] == paths[1]
    assert (paths[0] / "model.safetensors").is_file()
    assert stderr.getvalue().count(waiting) == 1


def load_weights(path):
    return load_file(str(path / "model.safetensors"))


def test_a_build_writes_the_same_bits_whatever_kernels_the_environment_asks_torch_for(tmp_path, monkeypatch):
    """torch picks AVX2 or AVX-512 kernels by CPU, and its own and MKL's ISA can be asked for in the
    environment; a built-in model is written with the baseline kernels either way (esvllm.model_build)."""
    import json
    import os
    import subprocess
    import sys

    from esvllm.model_build import BUILD_RECORD, spec_from_json, weights_sha256, write_reproducibly

    spec_json = json.dumps(dataclasses.asdict(SHORT))
    assert spec_from_json(spec_json) == SHORT
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("MKL_CBWR", "AVX2,STRICT")
    write_reproducibly(SHORT, tmp_path / "asks_avx2")
    refused = subprocess.run([sys.executable, "-m", "esvllm.model_build", spec_json, str(tmp_path / "unpinned")],
                             capture_output=True, text=True)  # the writer alone, in this environment
    assert refused.returncode != 0 and "kernels" in refused.stderr and not (tmp_path / "unpinned").exists()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE,STRICT")
    write_reproducibly(SHORT, tmp_path / "asks_baseline")
    a, b = load_weights(tmp_path / "asks_avx2"), load_weights(tmp_path / "asks_baseline")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # and two builds agree
    write_checkpoint(dataclasses.replace(SHORT, pretrain=None), tmp_path / "untrained")
    assert not torch.equal(a["model.norm.weight"], load_weights(tmp_path / "untrained")["model.norm.weight"])  # it trained
    record = json.loads((tmp_path / "asks_avx2" / BUILD_RECORD).read_text())
    assert record["cpu_capability"] == "DEFAULT" and record["weights_sha256"] == weights_sha256(tmp_path / "asks_avx2")
    if torch.backends.mkl.is_available():  # MKL_CBWR=COMPATIBLE,STRICT is mkl_service.h's 3 | 0x10000, read back
        assert record["mkl_cbwr_mode"] == 0x10003
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":  # the CPU's own kernels would give other bits
        monkeypatch.delenv("ATEN_CPU_CAPABILITY")
        monkeypatch.delenv("MKL_CBWR")
        native = tmp_path / "native"
        subprocess.run([sys.executable, "-c", "import sys; from esvllm.model_build import spec_from_json; "
                        "from esvllm.models import write_checkpoint; write_checkpoint(spec_from_json(sys.argv[1]), "
                        "sys.argv[2])", spec_json, str(native)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert weights_sha256(native) != record["weights_sha256"]


def test_the_corpus_writes_the_stated_share_of_sums_with_the_last_digit_one_too_high():
    import random

    from esvllm.pretrain import draw, last_digit_off, pretraining_samples

    assert [last_digit_off(a) for a in ("81", "49", "0", "109", "199")] == ["82", "40", "1", "100", "190"]
    recipe = Recipe(batch_size=4000, off_by_one_fraction=0.55)
    pairs = draw(pretraining_samples("addition"), recipe, random.Random(1))
    wrong = [(p, a) for p, a in pairs if a != str(sum_of(p))]
    # every wrong answer is the sum with its last digit one higher (9 -> 0), tens and hundreds kept
    assert all(a[:-1] == str(sum_of(p))[:-1] and int(a[-1]) == (sum_of(p) + 1) % 10 for p, a in wrong)
    share = len(wrong) / len(pairs)
    assert abs(share - 0.55) < 4 * (0.2475 / len(pairs)) ** 0.5  # binomial, four standard errors
    assert draw(pretraining_samples("addition"), Recipe(batch_size=50), random.Random(1)) == \
        random.Random(1).sample(pretraining_samples("addition"), 50)  # no error: the plain corpus


def sum_of(prompt: str) -> int:
    a, b = prompt.rstrip("=").split("+")
    return int(a) + int(b)


def test_a_writer_whose_mkl_runs_another_mode_than_the_pinned_environment_asks_refuses_to_write(tmp_path):
    """The environment only asks MKL for its reproducible mode; a library that sets MKL's mode itself
    (here, before the writer starts: mkl_cbwr_set(MKL_CBWR_AUTO), mkl_service.h's 2) is caught."""
    import json
    import os
    import subprocess
    import sys

    from esvllm.model_build import PINNED_ENV

    if not torch.backends.mkl.is_available():
        pytest.skip("this torch has no MKL")
    spec_json = json.dumps(dataclasses.asdict(dataclasses.replace(SHORT, pretrain=None)))
    script = ("import ctypes, sys, pathlib, torch; lib = ctypes.CDLL(str(pathlib.Path(torch.__file__).parent / 'lib' / "
              "'libtorch_cpu.so')); assert lib.mkl_serv_cbwr_set(2) == 0; from esvllm.model_build import main; "
              "main(sys.argv[1:])")  # 0: MKL_CBWR_SUCCESS
    done = subprocess.run([sys.executable, "-c", script, spec_json, str(tmp_path / "auto")], capture_output=True,
                          text=True, env={**os.environ, **PINNED_ENV})
    assert done.returncode != 0 and "MKL its reproducibility mode 2" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "auto").exists()
