//! The sender: export jobs, their windows and run history.

pub mod write;
