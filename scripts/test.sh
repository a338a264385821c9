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
# Lints: warnings are errors.
cargo clippy --locked --workspace --all-targets -- -D warnings
