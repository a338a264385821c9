#!/usr/bin/env bash
# The chaos soak (crates/ferry-soak, docs/guarantees.md "The chaos soak"):
# Ferry's relays, consumers, CDC captures and batch jobs on real services
# under a seeded fault schedule, then a check from the databases that every
# committed message was applied exactly once. Each run keeps faults.log
# (every fault with its times) in its directory. Starts the services,
# builds `ferry` and `ferry-soak` (dev profile; SOAK_PROFILE=release for a
# release build), and passes its arguments through:
#
#   scripts/soak.sh                                   # 30,000 messages over 90 s
#   scripts/soak.sh --messages 1000000 --duration 30m
#   scripts/soak.sh --seed 1234                       # replays seed 1234's schedule
#   scripts/soak.sh --overlap                         # several faults active at once
#   scripts/soak.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/services.sh
profile=${SOAK_PROFILE:-dev}
cargo build --locked --profile "$profile" -p ferry -p ferry-soak
dir=debug
[ "$profile" = dev ] || dir=$profile
exec "${CARGO_TARGET_DIR:-target}/$dir/ferry-soak" "$@"
