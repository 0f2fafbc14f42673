"""`make tensorboard` serves on loopback only."""

import os
import subprocess
import time

import psutil

from tests.engine.test_security_and_cluster import LOOPBACK, listening


def test_tensorboard_target_listens_on_loopback_only(tmp_path):
    port = 16006
    process = subprocess.Popen(["make", "-s", "tensorboard", f"OUTPUT={tmp_path}", f"PORT={port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, addresses = time.monotonic() + 90, []
        while time.monotonic() < deadline and not addresses:
            pids = {p.pid for p in psutil.Process(process.pid).children(recursive=True)}
            addresses = [a for a in listening(pids) if a[1] == port]
            time.sleep(0.5)
        assert addresses and all(a[0].startswith(LOOPBACK) for a in addresses), addresses
    finally:
        os.killpg(process.pid, 9)
