//! W3C trace context on a [`Message`]: the `traceparent` and `tracestate`
//! headers that let one message's spans — the producer's, the relay's,
//! the consumer's handler — share a trace.
//!
//! * Building a message ([`Message::event`], [`Message::command`]) copies
//!   the context of the current [`tracing`] span into its headers, when
//!   that span has an OpenTelemetry context (a `tracing-opentelemetry`
//!   layer is installed and the span is recorded). Without such a layer
//!   nothing is added, and building a message costs no more than before.
//! * The headers travel like any other header: the outbox's `headers`
//!   column, then every sink under the W3C names (an HTTP `traceparent`
//!   header, a NATS, AMQP or Kafka header, a Redis `h:traceparent` field,
//!   an SQS `traceparent` attribute).
//! * The relay, the consumer's router and inbox, and the event forwarder
//!   give their spans the message's context as parent ([`follow`]).
//!
//! The context is the message's *creation context* (OpenTelemetry's
//! messaging conventions): set once by the producer and not rewritten on
//! the way, so every hop's span is a child of the producer's span.

use std::collections::BTreeMap;
use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Message;

/// The W3C Trace Context header naming the producer's trace and span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C Trace Context header with vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// The `traceparent` value of `context`: `00-<trace id>-<span id>-<flags>`.
pub fn traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// Writes the OpenTelemetry context of `span` into `headers` as
/// [`TRACEPARENT`] (and [`TRACESTATE`] when there is trace state),
/// replacing earlier values. Returns false, and leaves `headers` alone,
/// when the span has no valid context (disabled, or no
/// `tracing-opentelemetry` layer).
pub fn inject(span: &tracing::Span, headers: &mut BTreeMap<String, String>) -> bool {
    if span.is_disabled() {
        return false;
    }
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    if !span_context.is_valid() {
        return false;
    }
    headers.insert(TRACEPARENT.to_owned(), traceparent(span_context));
    let state = span_context.trace_state().header();
    if state.is_empty() {
        headers.remove(TRACESTATE);
    } else {
        headers.insert(TRACESTATE.to_owned(), state);
    }
    true
}

/// The header `name` of `headers`, matched exactly first, then without
/// regard to case (brokers and HTTP may change a header's case).
fn header<'a>(headers: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .or_else(|| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .map(String::as_str)
}

/// Parses a `traceparent` value (W3C Trace Context, level 1). `None` for
/// an invalid one: a wrong length, non-hex digits, the version `ff`, an
/// all-zero trace or span id, or extra fields in version `00`.
pub fn parse_traceparent(value: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let is_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !is_hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !is_hex(trace_id, 32) || !is_hex(span_id, 16) || !is_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    // An unreadable tracestate is dropped, the parent is kept (the spec's
    // rule: tracestate never invalidates traceparent).
    let state = tracestate
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        // Only the sampled bit is defined; others are not passed on.
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// The producer's span context carried by `headers`, if a valid
/// [`TRACEPARENT`] is there.
pub fn extract(headers: &BTreeMap<String, String>) -> Option<SpanContext> {
    parse_traceparent(header(headers, TRACEPARENT)?, header(headers, TRACESTATE))
}

/// Makes the producer's context in `message`'s headers the parent of
/// `span`, which must not have been entered yet. Returns whether it did:
/// false when the span is disabled, or the message carries no valid
/// `traceparent`, or no `tracing-opentelemetry` layer records the span.
pub fn follow(span: &tracing::Span, message: &Message) -> bool {
    if span.is_disabled() {
        return false;
    }
    let Some(parent) = extract(&message.headers) else {
        return false;
    };
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent))
        .is_ok()
}

/// Like [`follow`], for a span made inside another Ferry span: when the
/// current span is already in `message`'s trace (e.g. the router's span
/// around a handler), `span` keeps it as parent; otherwise `span` follows
/// the message. Returns whether `span` is in the message's trace.
pub fn continue_trace(span: &tracing::Span, message: &Message) -> bool {
    if span.is_disabled() {
        return false;
    }
    let Some(parent) = extract(&message.headers) else {
        return false;
    };
    let current = tracing::Span::current();
    if !current.is_disabled()
        && current.context().span().span_context().trace_id() == parent.trace_id()
    {
        return true;
    }
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent))
        .is_ok()
}

/// The spans of a pipeline's deliveries (a relay's, a forwarder's): one
/// per message and attempt, made with the OpenTelemetry API on the global
/// tracer provider (`opentelemetry::global::set_tracer_provider`), not as
/// `tracing` spans: a relay makes tens of thousands a second and runs no
/// user code inside them, so they skip the `tracing` registry and its
/// OpenTelemetry layer, which cost several times more per span. Made only
/// once [`enable_delivery_spans`] was called (the daemon's `[telemetry]`
/// does); otherwise nothing is made, not even a header read.
pub struct Deliveries {
    tracer: opentelemetry::global::BoxedTracer,
    pipeline: &'static str,
    name: opentelemetry::Value,
}

static DELIVERY_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the relays' and forwarders' delivery spans ([`Deliveries`]) on or
/// off for the process. Call it after setting the global tracer provider.
pub fn enable_delivery_spans(enabled: bool) {
    DELIVERY_SPANS.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// One attempt to deliver a message: an OpenTelemetry span named
/// `deliver <topic>`, of kind producer, a child of the producer's span
/// from the message's `traceparent` (a root without one). It ends when
/// dropped; [`DeliverySpan::outcome`] records how.
pub struct DeliverySpan(opentelemetry::global::BoxedSpan);

impl Deliveries {
    /// The spans of the pipeline `pipeline` (e.g. `relay`, `forwarder`)
    /// named `name`, or `None` while delivery spans are not enabled
    /// ([`enable_delivery_spans`]).
    pub fn start(pipeline: &'static str, name: &str) -> Option<Self> {
        if !DELIVERY_SPANS.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        Some(Self {
            tracer: opentelemetry::global::tracer("ferry"),
            pipeline,
            name: name.to_owned().into(),
        })
    }

    /// The span of attempt `attempt` (1 for the first) to deliver
    /// `message`; it starts now.
    pub fn span(&self, message: &Message, attempt: u32) -> DeliverySpan {
        use opentelemetry::trace::{SpanKind, Tracer as _};
        use opentelemetry::KeyValue;
        let parent = match extract(&message.headers) {
            Some(parent) => opentelemetry::Context::new().with_remote_span_context(parent),
            None => opentelemetry::Context::new(),
        };
        let builder = self
            .tracer
            .span_builder(format!("deliver {}", message.topic))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("ferry.pipeline", self.pipeline),
                KeyValue::new("ferry.name", self.name.clone()),
                KeyValue::new("messaging.message.id", message.id.to_string()),
                KeyValue::new("messaging.destination.name", message.topic.clone()),
                KeyValue::new("ferry.attempt", i64::from(attempt)),
            ]);
        DeliverySpan(self.tracer.build_with_context(builder, &parent))
    }
}

impl DeliverySpan {
    /// Records what became of the message, e.g. `delivered`, `retry`,
    /// `given_up`, `released`; `failed` marks the span as an error.
    pub fn outcome(&mut self, outcome: &'static str, failed: bool) {
        use opentelemetry::trace::{Span as _, Status};
        self.0
            .set_attribute(opentelemetry::KeyValue::new("ferry.outcome", outcome));
        if failed {
            self.0.set_status(Status::error(outcome));
        }
    }

    /// The span's context (its trace and span id).
    pub fn span_context(&self) -> &SpanContext {
        use opentelemetry::trace::Span as _;
        self.0.span_context()
    }
}

impl Message {
    /// Sets the trace context headers from the current span, replacing any
    /// earlier ones (e.g. for a message built outside the span that enqueues
    /// it). Leaves them as they are when the current span has no
    /// OpenTelemetry context. See [the module docs](crate::trace).
    pub fn with_current_trace(mut self) -> Self {
        inject(&tracing::Span::current(), &mut self.headers);
        self
    }

    /// Removes the trace context headers: the message starts no trace of
    /// its own and its hops' spans are roots.
    pub fn without_trace(mut self) -> Self {
        self.headers.retain(|k, _| {
            !k.eq_ignore_ascii_case(TRACEPARENT) && !k.eq_ignore_ascii_case(TRACESTATE)
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn recording() -> (SdkTracerProvider, InMemorySpanExporter, tracing::Dispatch) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
        (provider, exporter, dispatch)
    }

    #[test]
    fn parses_and_formats_traceparent() {
        let cx = parse_traceparent(PARENT, Some("vendor=x")).unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(cx.trace_state().header(), "vendor=x");
        assert_eq!(traceparent(&cx), PARENT);
    }

    #[test]
    fn rejects_malformed_traceparent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad}");
        }
        // A later version may add fields.
        assert!(parse_traceparent(
            &PARENT.replacen("00", "01", 1).replace("-01", "-01-x"),
            None
        )
        .is_some());
    }

    #[test]
    fn extract_ignores_header_case_and_a_bad_tracestate() {
        let headers = BTreeMap::from([
            ("Traceparent".to_owned(), PARENT.to_owned()),
            ("TRACESTATE".to_owned(), "not a tracestate ===".to_owned()),
        ]);
        let cx = extract(&headers).unwrap();
        assert_eq!(traceparent(&cx), PARENT);
        assert_eq!(cx.trace_state().header(), "");
        assert!(extract(&BTreeMap::new()).is_none());
    }

    #[test]
    fn delivery_spans_are_children_of_the_producer_and_none_without_a_provider() {
        assert!(Deliveries::start("relay", "orders").is_none());
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        assert!(Deliveries::start("relay", "orders").is_none());
        enable_delivery_spans(true);
        let deliveries = Deliveries::start("relay", "orders").unwrap();
        let traced = Message::event("a.b", "{}").with_header(TRACEPARENT, PARENT);
        let mut span = deliveries.span(&traced, 2);
        span.outcome("retry", true);
        drop(span);
        drop(deliveries.span(&Message::event("a.b", "{}"), 1));
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let parent = parse_traceparent(PARENT, None).unwrap();
        let child = spans
            .iter()
            .find(|s| s.span_context.trace_id() == parent.trace_id())
            .unwrap();
        assert_eq!(child.name, "deliver a.b");
        assert_eq!(child.parent_span_id, parent.span_id());
        let attribute = |k: &str| {
            child
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attribute("ferry.outcome").as_deref(), Some("retry"));
        assert_eq!(attribute("ferry.attempt").as_deref(), Some("2"));
        assert_eq!(attribute("ferry.name").as_deref(), Some("orders"));
        let root = spans
            .iter()
            .find(|s| s.name == "deliver a.b" && s.span_context.trace_id() != parent.trace_id());
        assert_eq!(root.unwrap().parent_span_id, SpanId::INVALID);
        assert_eq!(spans.len(), 2, "{spans:#?}");
        enable_delivery_spans(false);
    }

    #[test]
    fn no_layer_no_headers() {
        let m = Message::event("a", "{}");
        assert!(!m.headers.contains_key(TRACEPARENT));
        let span = tracing::info_span!("x");
        assert!(!follow(&span, &m.with_header(TRACEPARENT, PARENT)));
    }

    #[test]
    fn a_message_built_in_a_span_carries_its_context_and_a_follower_is_its_child() {
        let (provider, exporter, dispatch) = recording();
        tracing::dispatcher::with_default(&dispatch, || {
            let producer = tracing::info_span!("produce");
            let message = producer.in_scope(|| Message::event("a", "{}"));
            let outside = Message::event("a", "{}");
            assert!(!outside.headers.contains_key(TRACEPARENT));
            let consumer = tracing::info_span!("consume");
            assert!(follow(&consumer, &message));
            drop(consumer);
            drop(producer);
            let rebuilt =
                tracing::info_span!("other").in_scope(|| message.clone().with_current_trace());
            assert_ne!(rebuilt.headers[TRACEPARENT], message.headers[TRACEPARENT]);
            assert!(!rebuilt.without_trace().headers.contains_key(TRACEPARENT));
            // Inside a span of the message's trace, a span keeps it as
            // parent; inside another trace's span, it follows the message.
            let handler = tracing::info_span!("handle");
            assert!(follow(&handler, &message));
            let inner = handler.in_scope(|| tracing::info_span!("inner"));
            assert!(handler.in_scope(|| continue_trace(&inner, &message)));
            let elsewhere = tracing::info_span!("elsewhere");
            let stray = elsewhere.in_scope(|| tracing::info_span!("stray"));
            assert!(elsewhere.in_scope(|| continue_trace(&stray, &message)));
            drop((inner, stray, handler, elsewhere));
            let parent = extract(&message.headers).unwrap();
            provider.force_flush().unwrap();
            let spans = exporter.get_finished_spans().unwrap();
            let produce = spans.iter().find(|s| s.name == "produce").unwrap();
            let consume = spans.iter().find(|s| s.name == "consume").unwrap();
            assert_eq!(produce.span_context.span_id(), parent.span_id());
            assert_eq!(consume.span_context.trace_id(), parent.trace_id());
            assert_eq!(consume.parent_span_id, parent.span_id());
            let named = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
            let id = |n: &str| named(n).span_context.span_id();
            assert_eq!(named("inner").parent_span_id, id("handle"));
            assert_eq!(named("stray").parent_span_id, parent.span_id());
            assert_eq!(named("stray").span_context.trace_id(), parent.trace_id());
            assert_ne!(
                named("elsewhere").span_context.trace_id(),
                parent.trace_id()
            );
        });
    }
}

/// Property tests (issue 13): a `traceparent` or `tracestate` of any text
/// never panics the parser, and a valid one formats back to itself.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Text shaped like a traceparent: dash-separated hex-ish fields.
    fn traceparent_like() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[ \t]{0,2}[0-9a-fA-Fx]{0,3}(-[0-9a-fA-Fz]{0,33}){0,5}[ \t]{0,2}",
            "\\PC{0,60}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_text_parses_or_is_refused_without_panic(
            value in traceparent_like(),
            state in proptest::option::of("\\PC{0,40}|[a-z0-9=,@ -]{0,40}"),
        ) {
            if let Some(cx) = parse_traceparent(&value, state.as_deref()) {
                prop_assert!(cx.is_valid() && cx.is_remote());
                // What was accepted formats as a version-00 traceparent
                // with the same ids.
                let formatted = traceparent(&cx);
                prop_assert_eq!(formatted.len(), 55);
                let again = parse_traceparent(&formatted, None).unwrap();
                prop_assert_eq!(again.trace_id(), cx.trace_id());
                prop_assert_eq!(again.span_id(), cx.span_id());
            }
            let headers = BTreeMap::from([
                ("TraceParent".to_owned(), value),
                ("tracestate".to_owned(), state.unwrap_or_default()),
            ]);
            let _ = extract(&headers);
        }

        #[test]
        fn a_valid_traceparent_round_trips(
            trace in 1u128..,
            span in 1u64..,
            sampled in any::<bool>(),
            state in proptest::collection::vec(("[a-z][a-z0-9_*/-]{0,10}", "[!-+--<>-~]{1,10}"), 0..4),
        ) {
            let value = format!("00-{trace:032x}-{span:016x}-{:02x}", u8::from(sampled));
            // Distinct keys: a tracestate with a key twice is invalid.
            let mut seen = std::collections::BTreeSet::new();
            let state: Vec<String> = state
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let state = state.join(",");
            let cx = parse_traceparent(&value, Some(&state)).unwrap();
            prop_assert_eq!(traceparent(&cx), value);
            prop_assert_eq!(cx.is_sampled(), sampled);
            prop_assert_eq!(cx.trace_state().header(), state);
        }
    }
}
