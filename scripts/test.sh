#!/usr/bin/env bash
# The whole test suite: starts the services it needs, then every test of
# every crate (unit, integration against real PostgreSQL, SQLite and NATS
# JetStream, and the process-level fault tests).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/services.sh
cargo test --workspace --locked "$@"
