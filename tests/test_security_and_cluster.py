"""Servers listen on loopback only; engines spread over a multi-node Ray cluster give the same result."""

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from .helpers import ARGS, final_weights, same_weights

pytestmark = pytest.mark.engine
LOOPBACK = ("127.", "::1", "::ffff:127.")


def listening(pids):
    addresses = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            addresses.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
    return addresses


def test_ray_and_the_engines_listen_on_loopback_only(engine_pair):
    me = psutil.Process()
    pids = {p.pid for p in me.children(recursive=True)} | {me.pid}
    pids |= {e.info["pid"] for e in engine_pair}
    addresses = listening(pids)
    assert addresses, "no listening socket found: the check would be empty"
    exposed = [a for a in addresses if not a[0].startswith(LOOPBACK)]
    assert not exposed, exposed


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


def test_engines_on_two_ray_nodes_agree_and_match_one_node(first_run, tmp_path):
    # A separate driver: Ray's own multi-node test cluster (two raylets on this machine).
    script = textwrap.dedent(f"""
        import json, os, sys
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the test cluster on loopback
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
        cluster.add_node(num_cpus=1)
        from esvllm.run import main
        run_dir = main({ARGS!r} + ["--output_dir", {str(tmp_path)!r}, "--ray_address", cluster.address])
        print("RUN_DIR", run_dir)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run_dir = next(line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("RUN_DIR"))
    from pathlib import Path

    run_dir = Path(run_dir)
    engines = json.loads((run_dir / "engines.json").read_text())
    assert len({e["node_id"] for e in engines}) == 2  # one engine per node
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["checksum"] for r in records)
    assert same_weights(final_weights(run_dir), final_weights(first_run))
