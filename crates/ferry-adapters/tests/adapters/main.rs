//! Integration tests of the registry: choosing and starting adapters from
//! URLs and configuration tables (the NATS server at 127.0.0.1:4222 for
//! starting a NATS sink). The adapters' own tests are in their crates.

mod config;
mod url_props;
