//! The conformance suite every broker adapter and the in-memory double pass.
