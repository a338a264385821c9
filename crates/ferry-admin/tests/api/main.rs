//! The admin API against real databases (PostgreSQL, and SQLite as a
//! second store), a real relay and HTTP sinks delivering to a real local
//! receiver, through real HTTP requests.
#![allow(missing_docs)]

mod auth;
mod bulk;
mod changes;
mod openapi;
mod params;
mod params_props;
mod support;
mod views;
