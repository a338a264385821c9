#!/usr/bin/env bash
# The whole test suite: starts the services it needs, then every test of
# every crate (unit, integration against real PostgreSQL, SQLite and NATS
# JetStream, and the process-level fault tests).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/services.sh
cargo test --workspace --locked "$@"
# The adapter registry with one adapter only (a library that needs one does
# not build the others); rebuilds just ferry-adapters, and runs its check
# that an adapter left out is refused by name.
cargo test --locked -p ferry-adapters --no-default-features --features http --lib
cargo test --locked -p ferry-adapters --no-default-features --features nats --lib
# The daemon with only the webhook and NATS adapters (docs/config.md says
# it builds without librdkafka and the other brokers' clients).
cargo check --locked -p ferry --no-default-features --features http,nats
# The chaos soak, reduced (crates/ferry-soak, docs/guarantees.md): Ferry's
# relays and consumers on private and shared servers under a seeded fault
# schedule, then the exactly-once check. One fixed seed, one random seed
# with overlapping faults (printed in the log, replay it with
# --seed N --overlap); about 2 minutes each.
cargo build --locked -p ferry -p ferry-soak
soak="${CARGO_TARGET_DIR:-target}/debug/ferry-soak"
"$soak" --seed 1 --messages 24000 --duration 75s --drain-timeout 150s
"$soak" --overlap --messages 24000 --duration 75s --drain-timeout 150s
# Every parser fuzzed for 5 s from its seed corpus (fuzz/, docs/testing.md),
# built in $CARGO_TARGET_DIR/fuzz.
./scripts/fuzz.sh 5
# Lints: warnings are errors.
cargo clippy --locked --workspace --all-targets -- -D warnings
