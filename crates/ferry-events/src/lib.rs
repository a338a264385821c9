//! Ferry's domain events and the event store's readers.

pub mod api;
pub mod client;
mod database;
pub mod forwarder;
pub mod unit_of_work;

pub use database::EventDatabase;
