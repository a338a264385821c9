//! Integration tests of the consumer side, linked once.

mod conformance;
mod dead_letters;
mod inbox;
mod router;
mod sigkill;
mod support;
