//! The daemon's configuration file (`ferry run --config`): any text is a
//! configuration or an error message, through `FerryConfig::parse`, the
//! function `ferry` itself calls. A configuration that parses parses again
//! the same way (the checks are deterministic).
//!
//! The `ferry` crate is a binary only, so its modules are compiled here
//! from crates/ferry/src (all of them but main.rs, as main.rs declares
//! them): a module added there that the configuration's modules use must
//! be added below too (the build fails with an unresolved `crate::` path
//! until it is).
#![no_main]
#![allow(dead_code, unused_imports)]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/ferry/src/admin.rs"]
mod admin;
#[path = "../../crates/ferry/src/batch.rs"]
mod batch;
#[path = "../../crates/ferry/src/cdc.rs"]
mod cdc;
#[path = "../../crates/ferry/src/config.rs"]
mod config;
#[path = "../../crates/ferry/src/consume.rs"]
mod consume;
#[path = "../../crates/ferry/src/events_api.rs"]
mod events_api;
#[path = "../../crates/ferry/src/forward.rs"]
mod forward;
#[path = "../../crates/ferry/src/log_writer.rs"]
mod log_writer;
#[path = "../../crates/ferry/src/metrics.rs"]
mod metrics;
#[path = "../../crates/ferry/src/output.rs"]
mod output;
#[path = "../../crates/ferry/src/pipeline.rs"]
mod pipeline;
#[path = "../../crates/ferry/src/startup.rs"]
mod startup;
#[path = "../../crates/ferry/src/telemetry.rs"]
mod telemetry;

fuzz_target!(|text: &str| {
    match config::FerryConfig::parse(text) {
        Ok(_) => {
            config::FerryConfig::parse(text).expect("parses the second time too");
        }
        Err(message) => assert!(!message.is_empty(), "{text:?}: an empty error"),
    }
});
