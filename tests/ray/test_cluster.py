"""Two Ray nodes on this machine: one engine on each, agreeing, the same result as one node.

Fake engines (the real ES state and checksums, no model): what is tested is placement over nodes and
the fleet keeping engines on different nodes in step."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import FAKE, final_weights, run, same_weights


def test_engines_on_two_ray_nodes_agree_and_match_one_node(tmp_path, ray_session):
    # A separate driver: Ray's own multi-node test cluster (two raylets on this machine).
    script = textwrap.dedent(f"""
        import json, os, sys
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the test cluster on loopback
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
        cluster.add_node(num_cpus=1)
        from esvllm.run import main
        run_dir = main({FAKE!r} + ["--output_dir", {str(tmp_path / "two")!r}, "--ray_address", cluster.address])
        print("RUN_DIR", run_dir)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run_dir = next(line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("RUN_DIR"))
    run_dir = Path(run_dir)
    engines = json.loads((run_dir / "engines.json").read_text())
    assert len({e["node_id"] for e in engines}) == 2  # one engine per node
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["checksum"] for r in records)
    one_node = run(tmp_path, "one", base=FAKE)
    assert same_weights(final_weights(run_dir), final_weights(one_node))
