//! Ferry's domain events and the event store's readers.

pub mod api;
pub mod client;
pub mod forwarder;
pub mod unit_of_work;

pub use ferry_store::event_store::EventDatabase;
