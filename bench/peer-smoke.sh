#!/usr/bin/env bash
# Smoke test of the bench-peers adapter WITHOUT the harness: runs
# peer-ferry.sh setup / enqueue / work / produce by hand against a
# PostgreSQL server (default 127.0.0.1:5432, user postgres, trust), the way
# run_peer.py drives a peer, and checks that FIRST_OUT, LAT_OUT and
# COMMITS_OUT have the formats run_peer.py reads (same arithmetic).
#
#   bench/peer-smoke.sh                 # N=5000, RATE=500, SECS=3
#   N=20000 SECS=5 bench/peer-smoke.sh
#   FERRY_BENCH=target/debug/ferry-bench bench/peer-smoke.sh
#
# Uses its own database ferry_peer_smoke_<pid>, dropped at the end, and a
# temp dir for the files. Needs psql and python3 (standard library only).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PEER=$HERE/peer-ferry.sh
HOST=${PGHOST:-127.0.0.1}; PORT=${PGPORT:-5432}
DB=ferry_peer_smoke_$$
N=${N:-5000}; RATE=${RATE:-500}; SECS=${SECS:-3}
OUT=$(mktemp -d /tmp/ferry-peer-smoke.XXXXXX)
PSQL="env PGOPTIONS=--client-min-messages=warning psql -X -q -At -h $HOST -p $PORT -U postgres"
export DATABASE_URL="postgresql://postgres@$HOST:$PORT/$DB"
W=""
now_ms() { python3 -c 'import time; print(repr(time.time() * 1000.0))'; }
fresh() { $PSQL -d postgres -c "drop database if exists $DB with (force)" -c "create database $DB"; }
pending() { $PSQL -d "$DB" -c "select exists(select 1 from ferry_outbox where status='pending')"; }
cleanup() {
  if [ -n "$W" ] && kill -0 "$W" 2>/dev/null; then kill -TERM "$W"; fi
  $PSQL -d postgres -c "drop database if exists $DB with (force)" || true
}
trap cleanup EXIT
last_json() { grep '^{' | tail -1; }

echo "== throughput: setup, enqueue N=$N (BATCH=1000), ANALYZE+CHECKPOINT, one worker until empty"
fresh
echo "setup:   $("$PEER" setup | last_json)"
ENQ=$(N=$N BATCH=1000 "$PEER" enqueue | last_json)
echo "enqueue: $ENQ"
$PSQL -d "$DB" -c "analyze" -c "checkpoint"
FIRST_OUT=$OUT/tp.first0 LAT_OUT="" "$PEER" work > "$OUT/tp.worker0.log" 2>&1 & W=$!
T0=$(date +%s)
while [ "$(pending)" = t ]; do
  sleep 0.05
  if [ $(( $(date +%s) - T0 )) -gt 120 ]; then echo "not drained in 120 s" >&2; exit 1; fi
done
T_END=$(now_ms)
kill -TERM "$W"; wait "$W"; W=""
python3 - "$OUT/tp.first0" "$T_END" "$N" <<'EOF'
import sys
first = float(open(sys.argv[1]).read())          # run_peer.py: float(open(f).read())
t_end, n = float(sys.argv[2]), int(sys.argv[3])
secs = (t_end - first) / 1000.0
print(f"drain:   {n / secs:.0f} msg/s ({n} in {secs:.3f} s from the first hand-off; 50 ms polling as the harness)")
EOF
grep -q READY "$OUT/tp.worker0.log" || { echo "worker printed no READY" >&2; exit 1; }

echo "== latency: setup, worker with LAT_OUT, READY + 1 s, produce RATE=$RATE SECS=$SECS, wait empty, SIGTERM"
fresh
"$PEER" setup > /dev/null
LAT_OUT=$OUT/lat.lat0.json FIRST_OUT=$OUT/lat.first0 "$PEER" work > "$OUT/lat.worker0.log" 2>&1 & W=$!
T0=$(date +%s)
until grep -q READY "$OUT/lat.worker0.log"; do
  sleep 0.05
  if [ $(( $(date +%s) - T0 )) -gt 30 ]; then echo "worker not ready" >&2; cat "$OUT/lat.worker0.log" >&2; exit 1; fi
done
sleep 1
PROD=$(RATE=$RATE SECS=$SECS COMMITS_OUT=$OUT/lat.commits.json "$PEER" produce | last_json)
echo "produce: $PROD"
while [ "$(pending)" = t ]; do sleep 0.05; done
sleep 0.3
kill -TERM "$W"; wait "$W"; W=""
python3 - "$OUT/lat.commits.json" "$OUT/lat.lat0.json" "$RATE" "$PROD" <<'EOF'
import json, sys
def pct(xs, p):  # as run_peer.py
    xs = sorted(xs); k = (len(xs) - 1) * p / 100.0; f = int(k)
    return xs[f] + (xs[min(f + 1, len(xs) - 1)] - xs[f]) * (k - f)
raw = json.load(open(sys.argv[1]))
commits = dict((int(x[0]), x[1]) for x in raw)
acks = [x[1] - x[2] for x in raw]
starts = dict((int(s), t) for s, t in json.load(open(sys.argv[2])))
warm = int(float(sys.argv[3]))
prod = json.loads(sys.argv[4])
lats = [starts[s] - commits[s] for s in commits if s >= warm and s in starts]
missing = sum(1 for s in commits if s not in starts)
neg = sum(1 for x in lats if x < 0)
print(f"latency: commit->hand-off p50 {pct(lats, 50):.2f} ms p90 {pct(lats, 90):.2f} p99 {pct(lats, 99):.2f} max {max(lats):.1f} "
      f"(n={len(lats)}, started_before_commit_ack={neg}, missing={missing}); enqueue_ack p50 {pct(acks, 50):.2f} p99 {pct(acks, 99):.2f}; "
      f"producer {prod['rate']:.0f}/s late={prod.get('late')}")
assert missing == 0, "messages without a hand-off"
EOF
echo "files: $OUT"
