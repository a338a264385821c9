//! W3C `traceparent` (and `tracestate`) parsing, ferry-core's trace.rs.
//! The input is the `traceparent` value, then, after a line feed, the
//! `tracestate` value. Round trip: a context that parses is written back
//! by `traceparent` and reads again as the same context.
#![no_main]

use std::collections::BTreeMap;

use ferry_core::trace::{extract, parse_traceparent, traceparent, TRACEPARENT, TRACESTATE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let (value, state) = match input.split_once('\n') {
        Some((value, state)) => (value, Some(state)),
        None => (input, None),
    };
    let Some(context) = parse_traceparent(value, state) else {
        return;
    };
    let written = traceparent(&context);
    let again = parse_traceparent(&written, Some(&context.trace_state().header()))
        .expect("a written traceparent parses");
    assert_eq!(again, context, "{value:?} -> {written:?}");
    // The same value as message headers, the name in another case.
    let mut headers = BTreeMap::new();
    headers.insert(TRACEPARENT.to_uppercase(), value.to_owned());
    if let Some(state) = state {
        headers.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    assert_eq!(extract(&headers), Some(context));
});
