//! Integration tests of the webhook sink, against an HTTP server started by
//! each test.

mod sink;
