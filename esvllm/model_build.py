"""Built-in models are written in a process of their own, pinned to torch's baseline kernels, so that
their bits do not depend on the kernels a CPU would pick.

torch picks its kernels by CPU: ATen's vectorised code at AVX2 or AVX-512, MKL's matrix products at
the processor's best ISA. The 1,500 pre-training steps of the demo's `adder` amplify those last-bit
differences into another model: built on a Zen 4 (AVX-512) it started where docs/demo.md's previous
build did, built on a Zen 1 (AVX2) elsewhere, with a weaker habit. The writer therefore runs with
ATen at its baseline ISA (`default`), MKL in its cross-processor reproducible mode (conditional
numerical reproducibility, `COMPATIBLE,STRICT`) and one thread, set before torch starts, which only a
fresh process guarantees; it reads both modes back from torch and MKL before it writes anything. A
pre-training step takes about 45% longer than with the CPU's own kernels (docs/demo.md). The `adder`
written this way had the same weights sha256 on an AVX2 and an AVX-512 CPU (docs/demo.md;
`build.json` records it).

    python -m esvllm.model_build SPEC_JSON DIR    # what build_model runs; prints nothing of its own
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE,STRICT", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}
BUILD_RECORD = "build.json"  # in the model's directory: the settings it was written with and its weights' hash
MKL_CBWR_ALL, MKL_CBWR_COMPATIBLE, MKL_CBWR_STRICT = -1, 3, 0x10000  # mkl_service.h
PINNED_MKL_MODE = MKL_CBWR_COMPATIBLE | MKL_CBWR_STRICT  # what MKL_CBWR=COMPATIBLE,STRICT asks for


def write_reproducibly(spec, path: Path) -> None:
    """Write built-in model `spec` (an esvllm.models.ModelSpec) into `path` in a pinned process. Its
    progress bar goes to this process's terminal."""
    done = subprocess.run([sys.executable, "-m", "esvllm.model_build", json.dumps(dataclasses.asdict(spec)), str(path)],
                          env={**os.environ, **PINNED_ENV})
    if done.returncode != 0:
        raise RuntimeError(f"writing the built-in model into {path} failed (exit code {done.returncode}); "
                           "its error is printed above")


def weights_sha256(path: Path) -> str:
    """sha256 over the checkpoint's tensors (names, dtypes, shapes and bytes), in name order."""
    import torch
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(Path(path) / "model.safetensors")).items()):
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def mkl_cbwr_mode() -> int | None:
    """The reproducibility mode MKL runs in, read back from the MKL inside torch (the environment
    variable is only a request); None where torch has no MKL or does not export MKL's service calls."""
    import ctypes

    import torch

    if not torch.backends.mkl.is_available():
        return None
    try:
        get = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return get(MKL_CBWR_ALL)


def spec_from_json(text: str):
    from esvllm.models import ModelSpec
    from esvllm.pretrain import Recipe

    fields = json.loads(text)
    recipe = fields.pop("pretrain")
    return ModelSpec(**fields, pretrain=Recipe(**recipe) if recipe else None)


def main(argv: list[str] | None = None) -> None:
    spec_json, directory = argv if argv is not None else sys.argv[1:]
    import torch

    from esvllm.models import write_checkpoint

    capability, mkl_mode = torch.backends.cpu.get_cpu_capability(), mkl_cbwr_mode()
    unpinned = {key: os.environ.get(key) for key, value in PINNED_ENV.items() if os.environ.get(key) != value}
    if capability != "DEFAULT" or unpinned or mkl_mode not in (None, PINNED_MKL_MODE):  # this CPU's own bits
        raise SystemExit(f"esvllm.model_build: torch runs its {capability} kernels, MKL its reproducibility mode "
                         f"{mkl_mode} (pinned: {PINNED_MKL_MODE}), environment {unpinned}; run it through "
                         f"esvllm.models.build_model, which sets {PINNED_ENV}")
    path = Path(directory)
    write_checkpoint(spec_from_json(spec_json), path)
    record = {"weights_sha256": weights_sha256(path), "torch": torch.__version__, "cpu_capability": capability,
              "mkl_cbwr_mode": mkl_mode, "env": {key: os.environ.get(key) for key in PINNED_ENV}}
    (path / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
