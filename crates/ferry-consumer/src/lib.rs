//! Ferry's consumer side: router, handler middleware, idempotent inbox
