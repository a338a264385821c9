//! The sender: export jobs, their windows and run history.
