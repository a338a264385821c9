//! Writing and reading batch files: CSV (RFC 4180) and JSON Lines, each
//! value in its canonical text ([`crate::ValueKind`]).
