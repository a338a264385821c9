//! The consumer side: router, handler middleware and the idempotent inbox.
