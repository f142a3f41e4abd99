#!/usr/bin/env bash
# `make demo`: generate the demo videos, start a local Ray head on loopback, submit the whole pipeline
# with `ray job submit`, print the result table, and stop the head this script started (only that one).
# What the set is and why: docs/demo.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
OUT="$PWD/demo_out"
PORT="${DEMO_RAY_PORT:-6390}"
DASH="${DEMO_DASHBOARD_PORT:-8265}"
AGENT="${DEMO_AGENT_PORT:-52375}"  # not Ray's default 52365, which another local Ray may hold
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=disabled   # the head listens on 127.0.0.1 only; use token auth on a shared cluster
export WANDB_MODE="${WANDB_MODE:-offline}"
mkdir -p "$OUT"

echo "==> 1/4 generating the demo set and converting it into $OUT/data (about 15 s)"
# JPEG frame folders, not mp4: the same bytes every time, so a demo run repeats exactly (libx264 through
# PyAV did not encode the same frames to the same bytes twice in one process)
"$BIN/videoiq" data synth "$OUT/data" --source frames

echo "==> 2/4 starting a local Ray head on 127.0.0.1:$PORT (dashboard and job server on :$DASH)"
# Its own session (process group): stopping it stops exactly this cluster, never another Ray of this user
# (which `ray stop` would). Every process of it asks its own dashboard whether a Train run is alive, not the
# cluster of the machine's latest `ray start` (docs/ray.md): a wrong answer there ends the run.
RAY_API_SERVER_ADDRESS="http://127.0.0.1:$DASH" setsid "$BIN/ray" start --head --block --node-ip-address 127.0.0.1 --port "$PORT" --dashboard-host 127.0.0.1 \
    --dashboard-port "$DASH" --dashboard-agent-listen-port "$AGENT" --num-cpus 4 --disable-usage-stats \
    > "$OUT/ray_head.log" 2>&1 &
HEAD=$!
stop_head() {
    echo "==> stopping the Ray head"
    kill -TERM -- "-$HEAD" 2>/dev/null || return 0
    for _ in $(seq 1 20); do kill -0 -- "-$HEAD" 2>/dev/null || return 0; sleep 1; done
    kill -KILL -- "-$HEAD" 2>/dev/null || true
}
trap stop_head EXIT
# Ready when a trivial job runs: the job server answers before the node's job agent can take jobs.
for _ in $(seq 1 120); do
    if "$BIN/ray" job submit --address "http://127.0.0.1:$DASH" -- true > /dev/null 2>&1; then break; fi
    if ! kill -0 "$HEAD" 2>/dev/null; then echo "the Ray head did not start; see $OUT/ray_head.log" >&2; exit 1; fi
    sleep 1
done

echo "==> 3/4 submitting launch/pipeline.py with ray job submit"
D=launch/configs/demo
"$BIN/ray" job submit --address "http://127.0.0.1:$DASH" --working-dir . -- \
    "$BIN/python" launch/pipeline.py --fp $D/fp.yaml --ap $D/ap.yaml --policy-pretrain $D/policy_pretrain.yaml \
    --policy $D/policy.yaml --eval $D/eval.yaml --set "data.root=$OUT/data" "run.storage_path=$OUT/runs"

echo "==> 4/4 done: the table is above; everything is in $OUT/runs (pipeline_summary.json, checkpoints, metrics.jsonl)"
