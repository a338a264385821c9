//! Integration tests of the consumer side, linked once.

mod conformance;
mod dead_letters;
mod inbox;
mod router;
mod sigkill;
mod support;
// The daemon's OTLP export, tested here against a real receiver.
#[path = "../../../ferry/src/telemetry.rs"]
mod telemetry;
mod trace;
