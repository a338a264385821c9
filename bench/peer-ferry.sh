#!/usr/bin/env bash
# Ferry's adapter for the bench-peers harness (../shared/bench-peers from the
# repository root):
#   peer-ferry.sh setup|enqueue|work|produce
# Driven by environment variables like the other peers' adapters; they are
# listed in bench/README.md and in crates/ferry-bench/src/peer.rs.
# Runs the release build of ferry-bench (target/release, or
# $CARGO_TARGET_DIR/release when set; FERRY_BENCH=/path/to/ferry-bench to
# use another). `exec`, so that the harness's SIGTERM reaches the relay.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${FERRY_BENCH:-${CARGO_TARGET_DIR:-$HERE/../target}/release/ferry-bench}
if [ ! -x "$BIN" ]; then
  echo "peer-ferry.sh: $BIN not found; build it: cargo build --release -p ferry-bench" >&2
  exit 2
fi
exec "$BIN" peer "$@"
