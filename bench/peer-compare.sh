#!/usr/bin/env bash
# Ferry beside the PostgreSQL queue peers, with the bench-peers harness
# (../shared/bench-peers from the repository root) on its own cluster (127.0.0.1:25432), without
# editing the harness and without writing into it: Ferry is registered
# through EXTRA_PEERS, results go to bench/results/, raw files to $PB/run.
#
#   bench/peer-compare.sh                      # the published session's steps, in its order
#   bench/peer-compare.sh ferry ferry_latency  # some steps
#   RUNS=2 LRUNS=3 bench/peer-compare.sh ...
#
# Steps (the default list reproduces every row of bench/README.md's peer
# tables, with the labels of bench/results/harness.out): nats_raw (NATS's
# own publish rate), ferry (throughput), peers (throughput), ferry_nats
# (ferry-bench drain to NATS on the same cluster), ferry_latency,
# peers_latency, summary (medians as Markdown, with the harness's own
# summarize.py). Not in the default list: ceiling (ferry-bench ceiling on the
# same cluster). Prerequisites: bench/README.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HARNESS=${HARNESS:-$REPO/../shared/bench-peers}
export PB=${PB:-/tmp/peerbench}
# The harness runs a peer's command from its own peers/ directory, so the
# command must be absolute: peers.json is made from bench/peers.json.in here.
mkdir -p "$PB"
export EXTRA_PEERS=$PB/ferry-peers.json
sed "s|@BENCH@|$HERE|" "$HERE/peers.json.in" > "$EXTRA_PEERS"
export RESULTS_TSV=$HERE/results/peers.tsv
# Importing the harness's Python modules must not leave __pycache__ in it.
export PYTHONDONTWRITEBYTECODE=1
PY=$PB/venv/bin/python
D="$PY $HARNESS/run_peer.py"
R=${RUNS:-3}
L=${LRUNS:-3}
BIN=$(realpath -m "${FERRY_BENCH:-${CARGO_TARGET_DIR:-$REPO/target}/release/ferry-bench}")
export FERRY_BENCH=$BIN   # peer-ferry.sh, run from the harness's directory, uses the same binary
PORT=${PGPORT:-25432}
PG="postgres://postgres@127.0.0.1:$PORT/postgres"
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
# ferry-bench's figures; a new file per day (a TSV with other columns is refused).
TSV=${TSV:-$HERE/results/ferry-bench-$(date -u +%F).tsv}

[ -x "$PY" ] || { echo "no $PY: run $HARNESS/setup.sh first" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p ferry-bench" >&2; exit 2; }
pg_isready -q -h 127.0.0.1 -p "$PORT" || { echo "no server on 127.0.0.1:$PORT: $HARNESS/pg.sh init && $HARNESS/pg.sh start" >&2; exit 2; }
mkdir -p "$HERE/results"

nats_raw() {  # JetStream's own publish rate with the same client crate (the ceiling of the NATS rows)
  "$BIN" --tsv "$TSV" nats-raw --nats-url "$NATS_URL" --messages 200000 --batch-size 1000 --runs "$R"
}
ferry() {  # relay to a null sink; N=100,000 tiny jobs, no key (as the peers), 1,000 per enqueue_many call
  $D throughput ferry c1-b1000 --runs "$R" CONC=1 RELAY_BATCH=1000
  # 2 relay workers in one process
  $D throughput ferry c2-b1000 --runs "$R" CONC=2 RELAY_BATCH=1000
  # Ferry's own workload: ordering keys (per-key waves, gap checks in the claim)
  $D throughput ferry c1-b1000-keys1000 --runs "$R" CONC=1 RELAY_BATCH=1000 KEYS=1000
}
peers() {  # each peer's best setting in RESULTS.md, re-measured in this session
  $D throughput graphile-worker c10-lq500-cj10-w2 --runs "$R" --workers 2 CONC=10 LQ=500 CJBD=10
  $D throughput pgmq q100-delete-w2 --runs "$R" --workers 2 QTY=100 MODE=delete
  $D throughput pg-boss b100-l2-w2 --runs "$R" --workers 2 BATCHSIZE=100 BURST=1 LCONC=2 POLL=0.5
}
ferry_nats() {  # ferry-bench drain to NATS JetStream on the same cluster: 100,000 ~217-byte messages, timed from the relay's start
  for c in 1 2 3; do
    "$BIN" --tsv "$TSV" drain --database "$PG" --nats-url "$NATS_URL" --sink nats \
      --messages 100000 --keys 0 --runs "$R" --baseline fill --concurrency "$c"
  done
  "$BIN" --tsv "$TSV" drain --database "$PG" --nats-url "$NATS_URL" --sink nats \
    --messages 100000 --keys 1000 --runs "$R" --baseline fill
}
ferry_latency() {  # one job per transaction (BEGIN; enqueue; COMMIT), 500 jobs/s, 20 s
  $D latency ferry c1 --runs "$L" CONC=1
}
peers_latency() {
  $D latency graphile-worker c10-lq100 --runs "$L" CONC=10 LQ=100 CJBD=0
  $D latency pg-boss notify-b100 --runs "$L" NOTIFY=1 BATCHSIZE=100 BURST=1 POLL=0.5
  $D latency pgmq poll10ms-q100 --runs "$L" QTY=100 MODE=delete POLL_MS=10
}
ceiling() {  # the same cluster's insert ceiling for Ferry's table (not in the default list)
  "$BIN" --tsv "$TSV" ceiling --database "$PG" --messages 200000 --runs "$R"
}
summary() {  # the harness's summarize.py, pointed at bench/results/peers.tsv
  "$PY" -c "import sys; sys.path.insert(0, '$HARNESS'); import summarize; summarize.HERE = '$HERE'; summarize.peers()"
}

for step in "${@:-nats_raw ferry peers ferry_nats ferry_latency peers_latency summary}"; do
  for s in $step; do $s; done
done
