#!/usr/bin/env bash
# Ferry beside the PostgreSQL queue peers, with the bench-peers harness
# (/work/shared/bench-peers) on its own cluster (127.0.0.1:25432), without
# editing the harness and without writing into it: Ferry is registered
# through EXTRA_PEERS, results go to bench/results/, raw files to $PB/run.
#
#   bench/peer-compare.sh                      # every step below, in this order
#   bench/peer-compare.sh ferry ferry_latency  # some steps
#   RUNS=2 LRUNS=3 bench/peer-compare.sh ...
#
# Steps: ferry, peers (throughput), ferry_latency, peers_latency, ceiling
# (ferry-bench ceiling on the same cluster), summary (medians as Markdown,
# with the harness's own summarize.py). Prerequisites: bench/README.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
HARNESS=${HARNESS:-/work/shared/bench-peers}
export PB=${PB:-/tmp/peerbench}
export EXTRA_PEERS=$HERE/peers.json
export RESULTS_TSV=$HERE/results/peers.tsv
# Importing the harness's Python modules must not leave __pycache__ in it.
export PYTHONDONTWRITEBYTECODE=1
PY=$PB/venv/bin/python
D="$PY $HARNESS/run_peer.py"
R=${RUNS:-3}
L=${LRUNS:-3}
BIN=${FERRY_BENCH:-$HERE/../../ferry-target/release/ferry-bench}
PORT=${PGPORT:-25432}

[ -x "$PY" ] || { echo "no $PY: run $HARNESS/setup.sh first" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p ferry-bench" >&2; exit 2; }
pg_isready -q -h 127.0.0.1 -p "$PORT" || { echo "no server on 127.0.0.1:$PORT: $HARNESS/pg.sh init && $HARNESS/pg.sh start" >&2; exit 2; }
mkdir -p "$HERE/results"

ferry() {  # relay to a null sink; N=100,000 tiny jobs, no key (as the peers), 1,000 per enqueue_many call
  $D throughput ferry c2-b500 --runs "$R" CONC=2 RELAY_BATCH=500
  $D throughput ferry c2-b500-w2 --runs "$R" --workers 2 CONC=2 RELAY_BATCH=500
  # Ferry's own workload: ordering keys (per-key waves, gap checks in the claim)
  $D throughput ferry c2-b500-keys1000 --runs "$R" CONC=2 RELAY_BATCH=500 KEYS=1000
}
peers() {  # each peer's best setting in RESULTS.md, re-measured in this session
  $D throughput graphile-worker c10-lq500-cj10-w2 --runs "$R" --workers 2 CONC=10 LQ=500 CJBD=10
  $D throughput pg-boss b100-l2-w2 --runs "$R" --workers 2 BATCHSIZE=100 BURST=1 LCONC=2 POLL=0.5
  $D throughput pgmq q100-delete-w2 --runs "$R" --workers 2 QTY=100 MODE=delete
}
ferry_latency() {  # one job per transaction (BEGIN; enqueue; COMMIT), 20 s
  $D latency ferry c2 --runs "$L" CONC=2
  $D latency ferry c2-150ps --runs "$L" --rate 150 CONC=2
}
peers_latency() {
  $D latency graphile-worker c10-lq100 --runs "$L" CONC=10 LQ=100 CJBD=0
  $D latency pg-boss notify-b100 --runs "$L" NOTIFY=1 BATCHSIZE=100 BURST=1 POLL=0.5
  $D latency pgmq poll10ms-q100 --runs "$L" QTY=100 MODE=delete POLL_MS=10
  $D latency graphile-worker c10-lq100-150ps --runs "$L" --rate 150 CONC=10 LQ=100 CJBD=0
}
ceiling() {  # the same cluster's insert ceiling for Ferry's table, same session
  "$BIN" --tsv "$HERE/results/ferry-bench.tsv" ceiling \
    --database "postgres://postgres@127.0.0.1:$PORT/postgres" --messages 200000 --runs 3
}
summary() {  # the harness's summarize.py, pointed at bench/results/peers.tsv
  "$PY" -c "import sys; sys.path.insert(0, '$HARNESS'); import summarize; summarize.HERE = '$HERE'; summarize.peers()"
}

for step in "${@:-ferry peers ferry_latency peers_latency ceiling summary}"; do
  for s in $step; do $s; done
done
