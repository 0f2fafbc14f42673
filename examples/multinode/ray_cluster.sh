#!/usr/bin/env bash
# ES on several machines: a Ray head here, a Ray worker on each of $WORKERS (started with ssh, or with
# srun inside a Slurm job: slurm.sbatch), then `python -m esvllm.run --ray_address HEAD:PORT "$@"`
# here. Every node needs the same checkout, the same .venv and the model at the same path (or a Hub
# cache). See docs/usage/multi-node.md.
#
#   WORKERS="gpu2 gpu3 gpu4" GPUS_PER_NODE=8 examples/multinode/ray_cluster.sh \
#       --experiment countdown --cuda_devices $(seq -s, 0 31) --model_name /models/Qwen2.5-3B-Instruct
#
# Settings (environment): WORKERS (other nodes' ssh names; empty: this node only), GPUS_PER_NODE
# (default: what nvidia-smi lists), CPUS_PER_NODE (default: all cores), HEAD_IP (default: this
# node's first address), PORT (6379), PYTHON (.venv/bin/python), JOIN_TIMEOUT (300 s for every node
# to join). HEAD_IP is the address the nodes reach the head at; Ray's servers (the head's GCS on
# PORT, each node's raylet) listen on every interface of their node (seen with Ray 2.60), so run the
# cluster on a private network or behind a firewall. Every Ray process of the cluster checks Ray's
# token (RAY_AUTH_MODE=token): a random one in .ray-cluster/auth_token (mode 600, in the checkout
# every node sees), or the file RAY_AUTH_TOKEN_PATH names.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
RAY=${RAY:-$(dirname "$PYTHON")/ray}
PORT=${PORT:-6379}
HEAD_IP=${HEAD_IP:-$(hostname -I | awk '{print $1}')}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)}
CPUS_PER_NODE=${CPUS_PER_NODE:-$(nproc)}
WORKERS=${WORKERS:-}
NODES=$(( 1 + $(wc -w <<< "$WORKERS") ))
pids=()

export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$PWD/.ray-cluster/auth_token}
if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
  (umask 077 && mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")" &&
   "$PYTHON" -c "import secrets; print(secrets.token_hex(32))" > "$RAY_AUTH_TOKEN_PATH")
fi

stop_cluster() {  # SIGTERM to each `ray start --block` stops the Ray processes it started, and no others
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop_cluster EXIT

"$RAY" start --head --block --node-ip-address="$HEAD_IP" --port="$PORT" --include-dashboard=false \
    --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" --disable-usage-stats > /dev/null &
pids+=($!)
on_node() {  # run a shell command on another node: a job step inside Slurm, ssh outside it
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    srun --nodes=1 --ntasks=1 --overlap -w "$1" bash -c "$2"
  else
    ssh "$1" "$2"
  fi
}
for node in $WORKERS; do
  on_node "$node" "cd '$PWD' && RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH='$RAY_AUTH_TOKEN_PATH' '$RAY' start --block --address='$HEAD_IP:$PORT' --num-cpus='$CPUS_PER_NODE' \
      --num-gpus='$GPUS_PER_NODE' --disable-usage-stats" > /dev/null &
  pids+=($!)
done

# Wait until every node has joined (a run started earlier would see too few GPUs and wait for them).
"$PYTHON" - "$HEAD_IP:$PORT" "$NODES" "${JOIN_TIMEOUT:-300}" <<'PY'
import sys, time
import ray

address, nodes, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        break
    except ConnectionError:
        if time.monotonic() > deadline:
            sys.exit(f"no Ray head at {address} after {timeout:.0f} s")
        time.sleep(2)
while len([n for n in ray.nodes() if n["Alive"]]) < nodes:
    if time.monotonic() > deadline:
        sys.exit(f"only {len([n for n in ray.nodes() if n['Alive']])} of {nodes} nodes joined {address} in {timeout:.0f} s")
    time.sleep(2)
print(f"Ray cluster at {address}: {nodes} node(s), {ray.cluster_resources().get('GPU', 0):.0f} GPUs, "
      f"{ray.cluster_resources().get('CPU', 0):.0f} CPUs", flush=True)
PY

"$PYTHON" -m esvllm.run --ray_address "$HEAD_IP:$PORT" "$@"
