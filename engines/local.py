"""In-process mode (`--in_process`): one engine in the driver's own process, no Ray.

The same engine actor class and the same fleet interface as engines.pool, so a run computes the same
weights: a call runs at once in this process and its "ref" is its finished outcome. For a notebook,
one GPU, or a machine without Ray. Nothing replaces an engine here: its errors are the run's errors.

    pool = LocalPool.start(model_path, options)   # options.in_process, one engine
"""

from __future__ import annotations

import contextlib
import os
import time

from engines.backends import actor_class
from engines.options import EngineOptions, actor_env, actor_options
from engines.pool import EngineHandle, check_model_dir


class Done:
    """A call that already ran: its value, or the exception it raised."""

    def __init__(self, fn, *args):
        try:
            self.value, self.error = fn(*args), None
        except Exception as exc:  # noqa: BLE001 - raised again where the caller waits, as Ray would
            self.value, self.error = None, exc


class LocalHandle(EngineHandle):
    """An engine object in this process behind EngineHandle's calls."""

    def submit(self, method, *args):
        return Done(getattr(self.actor, method if isinstance(method, str) else method.__name__), *args)

    def wait(self, ref: Done, timeout: float | None = None):
        if ref.error is not None:
            raise ref.error
        return ref.value


class LocalPool:
    """EnginePool's interface over one engine in this process."""

    def __init__(self, model_path: str, options: EngineOptions, engine: LocalHandle, set_num_threads):
        self.model_path = model_path
        self.options = options
        self.engines = [engine]
        self.set_num_threads = set_num_threads  # torch's own, put back at shutdown

    @classmethod
    def start(cls, model_path: str, options: EngineOptions) -> "LocalPool":
        check_model_dir(model_path)
        if options.num_engines != 1 or options.tensor_parallel_size != 1:
            raise ValueError("in-process mode runs one engine of one device (num_engines 1, tensor_parallel_size 1)")
        import torch

        select_gpu(options)
        set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it for the whole process
        started = time.perf_counter()
        with engine_environment(options):
            actor = actor_class(options.backend)(0, model_path, actor_options(model_path, options, 0))
        engine = LocalHandle(0, actor)
        engine.info = actor.ready()
        engine.info.setdefault("start_s", time.perf_counter() - started)
        return cls(model_path, options, engine, set_num_threads)

    @staticmethod
    def wait_any(refs: list, timeout: float | None = None) -> list:
        return refs[:1]  # every call has finished by the time it is submitted

    def spawn(self, index: int, model_path: str | None = None):
        raise RuntimeError("in-process mode has no engine to replace a failed one with")

    def drop(self, engine) -> None:
        self.engines = [e for e in self.engines if e is not engine]

    def adopt(self, engine) -> None:
        self.engines = sorted([*self.engines, engine], key=lambda e: e.index)

    def shutdown(self) -> None:
        import torch

        self.engines = []  # the engine's memory goes with the last reference to it
        torch.set_num_threads = self.set_num_threads  # this process's own again (pretraining relies on it)


@contextlib.contextmanager
def engine_environment(options: EngineOptions):
    """While the engine is created, what a Ray actor gets as its runtime_env (vLLM reads it then: its
    cores, no engine subprocess); this process's own environment afterwards (its progress bars)."""
    setting = {k: v for k, v in actor_env(options, 0).items() if k != "TQDM_DISABLE"}
    saved = {k: os.environ.get(k) for k in setting}
    os.environ.update(setting)
    try:
        yield
    finally:  # only what was set here: what vLLM itself set while starting stays
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def select_gpu(options: EngineOptions) -> None:
    """CUDA_VISIBLE_DEVICES for --cuda_devices, which only counts before this process first uses CUDA."""
    if options.device != "cuda" or not options.cuda_devices:
        return
    wanted = ",".join(map(str, options.cuda_devices))
    import torch

    if torch.cuda.is_initialized() and os.environ.get("CUDA_VISIBLE_DEVICES") != wanted:
        raise RuntimeError(f"--cuda_devices {wanted}: CUDA is already in use in this process (visible: "
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'all')}); start a new process, or set "
                           f"CUDA_VISIBLE_DEVICES={wanted} before anything uses the GPU")
    os.environ["CUDA_VISIBLE_DEVICES"] = wanted
