#![allow(missing_docs)]
//! ferry-events against real databases, a real webhook receiver and a real
//! HTTP server: the forwarder, units of work and domain events, the events
//! API and its client. One test binary; each part a module.

#[macro_use]
mod support;
#[macro_use]
mod api_common;

mod api;
mod client;
mod domain;
mod forwarder;
mod params_props;
