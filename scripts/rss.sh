#!/usr/bin/env bash
# Resident memory of `ferry relay` (PostgreSQL outbox -> NATS JetStream) and
# `ferry consume` (NATS -> null://) under load.
#
#   scripts/rss.sh            # builds the release ferry, then measures
#   FERRY_BIN=path scripts/rss.sh   # measures that binary (no build)
#   RSS_SAMPLES= scripts/rss.sh     # without the list of samples
#
# Environment: MESSAGES (300000), BATCH (1000 rows per INSERT), PG_URL
# (postgres://postgres@127.0.0.1:5432), NATS_HOST/NATS_PORT (127.0.0.1 4222),
# INTERVAL (0.5 s between samples), SETTLE (10 s sampled after the drain).
#
# Both processes run on a scratch database (created and dropped here) and a
# scratch JetStream stream (deleted at the end). Once both are up, MESSAGES
# messages of the shape of ferry-bench's `order` payload (~217 bytes) are
# enqueued in INSERTs of BATCH rows (one transaction each) while both run;
# /proc/PID/status (VmRSS, RssAnon, RssFile, VmHWM) of each is sampled
# every INTERVAL seconds until the outbox is empty, the consumer has
# acknowledged every message, and SETTLE more seconds have passed.
#
# Printed: per process the peak and the steady figures (median of the samples
# from the middle of the load until the end), the idle figure before the
# load, the largest mappings of /proc/PID/smaps at the end, and every sample.
set -euo pipefail

MESSAGES=${MESSAGES:-300000}
BATCH=${BATCH:-1000}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
NATS_HOST=${NATS_HOST:-127.0.0.1}
NATS_PORT=${NATS_PORT:-4222}
INTERVAL=${INTERVAL:-0.5}
SETTLE=${SETTLE:-10}

root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${FERRY_BIN:-}" ]; then
  (cd "$root" && cargo build --release --quiet -p ferry --bin ferry)
  FERRY_BIN=${CARGO_TARGET_DIR:-$root/target}/release/ferry
fi
[ -x "$FERRY_BIN" ] || { echo "rss: no ferry binary at $FERRY_BIN" >&2; exit 1; }

tag=rss$$
db=ferry_$tag
stream=FERRY_${tag^^}
prefix=$tag.
work=$(mktemp -d)
nats_url="nats://$NATS_HOST:$NATS_PORT?stream=$stream&subject_prefix=$prefix"
pids=()

# One JetStream API request (subject, JSON body) over the plain NATS protocol;
# prints the JSON reply.
js() {
  python3 - "$NATS_HOST" "$NATS_PORT" "$1" "${2:-}" <<'EOF'
import socket, sys
host, port, subject, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode()
s = socket.create_connection((host, port), timeout=5)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.rss 1\r\n'
          + b"PUB " + subject.encode() + b" _INBOX.rss " + str(len(body)).encode() + b"\r\n" + body + b"\r\nPING\r\n")
while True:
    line = f.readline()
    if not line:
        sys.exit("rss: NATS closed the connection")
    if line.startswith(b"MSG "):
        size = int(line.split()[-1])
        print(f.read(size + 2)[:size].decode())
        break
    if line.startswith(b"-ERR"):
        sys.exit("rss: NATS: " + line.decode().strip())
EOF
}

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  js "\$JS.API.STREAM.DELETE.$stream" >/dev/null 2>&1 || true
  psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Run a fresh copy written with cat: the binary's RssFile depends on how its
# pages came into the page cache (each fault maps the cached neighbours of
# the page too, and large folios), by up to 3 MB for the same binary copied
# with cp, cat or objcopy; a copy made the same way each time compares.
cat "$FERRY_BIN" >"$work/ferry"
chmod +x "$work/ferry"
binary=$FERRY_BIN
FERRY_BIN=$work/ferry

psql -q "$PG_URL/postgres" -c "CREATE DATABASE $db" >/dev/null
database=$PG_URL/$db

"$FERRY_BIN" relay --database "$database" --migrate --to "$nats_url" \
  >"$work/relay.log" 2>&1 &
relay=$!
pids+=("$relay")
for _ in $(seq 100); do
  psql -qtA "$database" -c "SELECT to_regclass('ferry_outbox') IS NOT NULL" 2>/dev/null | grep -q t && break
  kill -0 "$relay" 2>/dev/null || { cat "$work/relay.log" >&2; exit 1; }
  sleep 0.2
done
sleep 1 # the stream is made at the relay's start-up
"$FERRY_BIN" consume --from "$nats_url" --to null:// --topic orders --group rss \
  --database "$database" >"$work/consume.log" 2>&1 &
consume=$!
pids+=("$consume")
sleep 2
for pid in "$relay" "$consume"; do
  kill -0 "$pid" 2>/dev/null || { cat "$work"/*.log >&2; exit 1; }
done

# sample PID FILE: one line per INTERVAL, "epoch phase VmRSS RssAnon RssFile VmHWM" (kB)
sample() {
  while [ -r "/proc/$1/status" ]; do
    awk -v t="$(date +%s.%N)" -v p="$(cat "$work/phase")" '
      /^VmHWM:/ {h=$2} /^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} /^RssFile:/ {f=$2}
      END {if (r) printf "%.3f %s %d %d %d %d\n", t, p, r, a, f, h}' "/proc/$1/status" >>"$2" || true
    sleep "$INTERVAL"
  done
}
echo idle >"$work/phase"
sample "$relay" "$work/relay.samples" &
pids+=($!)
sample "$consume" "$work/consume.samples" &
pids+=($!)
sleep 3

# The load: MESSAGES rows, BATCH per INSERT, each its own transaction.
echo load >"$work/phase"
t0=$(date +%s.%N)
awk -v n="$MESSAGES" -v b="$BATCH" 'BEGIN {
  for (i = 0; i < n; i += b) {
    j = (i + b < n ? i + b : n) - 1
    printf "INSERT INTO ferry_outbox (topic, payload) SELECT '\''orders'\'', "
    printf "format('\''{\"seq\":%%s,\"type\":\"OrderPlaced\",\"order_id\":123456789,\"customer_id\":987654,\"amount_cents\":129900,\"currency\":\"KRW\",\"items\":[{\"sku\":\"SKU-0001\",\"qty\":2},{\"sku\":\"SKU-0002\",\"qty\":1}],\"note\":\"benchmark payload padding ......\"}'\'', g) "
    printf "FROM generate_series(%d, %d) g;\n", i, j
  }
}' | psql -q -v ON_ERROR_STOP=1 "$database" >/dev/null
t_enq=$(date +%s.%N)

# Until the outbox is empty and the consumer holds nothing.
pending() {
  local outbox consumer
  outbox=$(psql -qtA "$database" -c "SELECT count(*) FROM ferry_outbox WHERE status = 'pending'")
  consumer=$(js "\$JS.API.CONSUMER.LIST.$stream" '{}' | python3 -c '
import json, sys
cs = json.load(sys.stdin).get("consumers") or []
print(sum(c["num_pending"] + c["num_ack_pending"] for c in cs) if cs else -1)')
  echo "$outbox $consumer"
}
while :; do
  for pid in "$relay" "$consume"; do
    kill -0 "$pid" 2>/dev/null || { echo "rss: a process exited" >&2; cat "$work"/*.log >&2; exit 1; }
  done
  read -r outbox consumer < <(pending)
  [ "$outbox" = 0 ] && [ "$consumer" = 0 ] && break
  sleep 0.5
done
t_done=$(date +%s.%N)
echo settle >"$work/phase"
sleep "$SETTLE"
stream_msgs=$(js "\$JS.API.STREAM.INFO.$stream" | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"]["messages"])')

smaps() { # PID: the largest mappings by Rss, anonymous and file-backed
  awk '
    /^[0-9a-f]+-[0-9a-f]+ / {name = ($6 == "" ? "[anon]" : $6); sub(/.*\//, "", name)}
    /^Rss:/ {rss[name] += $2}
    /^Anonymous:/ {anon[name] += $2}
    END {for (n in rss) if (rss[n] > 0) printf "  %8d kB  (anon %6d kB)  %s\n", rss[n], anon[n], n}
  ' "/proc/$1/smaps" | sort -rn | head -12
  echo "  threads: $(ls "/proc/$1/task" | wc -l)"
}
summary() { # NAME FILE
  python3 - "$1" "$2" "$t0" "$t_done" <<'EOF'
import statistics, sys
name, path, t0, t_done = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
rows = [l.split() for l in open(path)]
rows = [(float(t), p, *map(int, rest)) for t, p, *rest in rows]
idle = [r for r in rows if r[1] == "idle"]
# steady: from the middle of the loaded period to the end of the settle time
mid = t0 + (t_done - t0) / 2
steady = [r for r in rows if r[0] >= mid]
mb = lambda kb: f"{kb / 1000:.1f} MB"
peak = max(rows, key=lambda r: r[2])
print(f"{name}: peak VmRSS {mb(peak[2])} (RssAnon {mb(peak[3])}, RssFile {mb(peak[4])}); "
      f"max RssAnon {mb(max(r[3] for r in rows))}; VmHWM {mb(rows[-1][5])}")
med = lambda i: statistics.median(r[i] for r in steady)
print(f"{name}: steady (median of {len(steady)} samples from mid-load on) VmRSS {mb(med(2))} "
      f"(RssAnon {mb(med(3))}, RssFile {mb(med(4))})")
if idle:
    print(f"{name}: idle before the load VmRSS {mb(idle[-1][2])} (RssAnon {mb(idle[-1][3])}, RssFile {mb(idle[-1][4])})")
EOF
}

echo "# scripts/rss.sh: $("$FERRY_BIN" --version), $(stat -c %s "$binary") bytes (run from a copy), $(date -u +%FT%TZ)"
echo "# $MESSAGES messages enqueued in $(awk -v a="$t0" -v b="$t_enq" 'BEGIN {printf "%.1f", b - a}') s, all relayed and consumed $(awk -v a="$t0" -v b="$t_done" 'BEGIN {printf "%.1f", b - a}') s after the first; stream holds $stream_msgs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
summary relay "$work/relay.samples"
summary consume "$work/consume.samples"
echo "## relay /proc/PID/smaps at the end, largest mappings"
smaps "$relay"
echo "## consume /proc/PID/smaps at the end, largest mappings"
smaps "$consume"
if [ -n "${RSS_SAMPLES-1}" ]; then
  echo "## relay samples (epoch phase VmRSS RssAnon RssFile VmHWM, kB)"
  cat "$work/relay.samples"
  echo "## consume samples"
  cat "$work/consume.samples"
fi
