//! Integration tests of the NATS adapter, against the NATS server at
//! 127.0.0.1:4222 and private nats-server processes.

mod codec_props;
mod conformance;
mod sink;
