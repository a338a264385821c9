//! Integration tests of the sinks, against real servers: an HTTP server
//! started by each test, and the NATS server at 127.0.0.1:4222.

mod config;
mod http;
mod nats;
mod nats_conformance;
