"""The multi-node recipe as Slurm runs it, on this one machine: examples/multinode/slurm.sbatch (with a
`scontrol` that names this node) starts a Ray head through ray_cluster.sh, waits for it, runs
`esvllm.run --ray_address` through it, and stops the cluster it started, and nothing else."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import psutil

from tests.helpers import FAKE

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if text in line:
            found.append(line[:120])
    return found


def test_the_slurm_recipe_runs_through_the_cluster_it_starts_and_stops_it(tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "scontrol").write_text("#!/bin/sh\necho localhost\n")  # a one-node allocation: this machine
    (shims / "scontrol").chmod(0o755)
    port, token = free_port(), tmp_path / "token"
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_CPUS_PER_TASK": "2", "SLURM_SUBMIT_DIR": str(ROOT), "PYTHON": sys.executable,
           "HEAD_IP": "127.0.0.1", "PORT": str(port), "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "JOIN_TIMEOUT": "60"}  # the test's Ray on loopback
    flags = [a for a in FAKE if a not in ("--num_engines", "2")]
    recipe = subprocess.Popen(["bash", str(ROOT / "examples" / "multinode" / "slurm.sbatch"), *flags,
                               "--output_dir", str(tmp_path / "runs")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = recipe.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(recipe.pid, signal.SIGTERM)  # its trap stops the cluster it started
        raise AssertionError(recipe.communicate(timeout=60)[0][-3000:]) from None
    assert recipe.returncode == 0, output[-3000:]
    assert f"Ray cluster at 127.0.0.1:{port}: 1 node(s), 0 GPUs, 2 CPUs" in output, output[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["ray_address"] == f"127.0.0.1:{port}"
    assert [e["index"] for e in json.loads((run_dir / "engines.json").read_text())] == [0]  # one engine per CPU node
    assert (run_dir / "final" / "model.safetensors").stat().st_size > 0
    assert stat.S_IMODE(token.stat().st_mode) == 0o600  # a token only this user reads
    assert not processes_mentioning(f"127.0.0.1:{port}"), processes_mentioning(f"127.0.0.1:{port}")
