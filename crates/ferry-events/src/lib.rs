//! Ferry's domain events and the event store's readers.

pub mod api;
pub mod client;
