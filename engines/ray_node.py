"""The run's Ray: started once with what its engines need, joined when a cluster is given, and left
without waiting when a signal to the whole process group ended it too.

    owns_ray = start_ray(options, address)   # CPU: the cores; CUDA: exactly the --cuda_devices ids
    if private_ray_is_gone(): exit_without_ray(130)
"""

from __future__ import annotations

import logging
import os
import sys


def private_ray_is_gone(watch_s: float = 1.0) -> bool:
    """True when the Ray this process started stopped serving: its GCS server, sent the same signal
    as this process (a signal to the whole process group), closes its port while the process lingers,
    and every Ray call would then wait about 60 s and fail. Watched for `watch_s`, as the port closes
    a moment after the signal."""
    import socket
    import time

    import ray

    try:
        host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    except Exception:  # noqa: BLE001 - no address known: assume it serves
        return False
    deadline = time.monotonic() + watch_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                pass
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def exit_without_ray(code: int) -> None:
    """End this process now, after its private Ray died under it: kill what is left of Ray's processes
    and skip Ray's own shutdown hooks (they wait for the dead GCS)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start_ray(options, address: str | None = None, verbose: bool = False) -> bool:
    """Start (or join) Ray once with everything these engines need: on CPU its cores, on CUDA exactly
    the GPUs of --cuda_devices. True when this call started a private Ray (the caller shuts it down)."""
    if options.device == "cpu":
        return init_ray(address, num_cpus=max(len(os.sched_getaffinity(0)), options.num_engines), verbose=verbose)
    return init_ray(address, cuda_devices=options.cuda_devices, verbose=verbose)


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
             verbose: bool = False, cuda_devices: list[int] | None = None) -> bool:
    """Join `address`, or start a private local Ray bound to 127.0.0.1 with no dashboard.

    Returns True when this call started a Ray instance (the caller then owns its shutdown). With
    `cuda_devices`, a private Ray sees exactly those GPUs (CUDA_VISIBLE_DEVICES, set before it starts,
    is what Ray hands out to the engines), so two runs on one node given 0,1 and 2,3 never share one.

    Engine logs reach this console only with `verbose` (they stay in Ray's log folder otherwise).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=verbose)
    if address:
        ray.init(address=address, **kwargs)
        return False
    # Ray maps 127.0.0.1 to the machine's address unless it thinks it runs a laptop-only cluster;
    # this switch (read by Ray here and by the processes it starts) keeps every server on loopback.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    if cuda_devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in cuda_devices)
        num_gpus = len(cuda_devices)
    # address="local": always a new private instance, never another run's Ray found on this machine.
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    return True
