//! Export of the daemon's spans to an OpenTelemetry collector over OTLP,
//! configured by the `[telemetry]` table and off without it.
//!
//! The spans are the `tracing` spans Ferry already makes — a relay's
//! delivery of a message (`ferry.relay.deliver`), a consumer's handling
//! (`ferry.consume`, `ferry.inbox`), a forwarder's delivery of an event
//! (`ferry.forward`) — each a child of the producer's span through the
//! message's `traceparent` header (see `ferry_core::trace`). Spans are
//! batched and sent from a background thread, so a slow or absent
//! collector never holds a delivery up: when its queue is full, spans are
//! dropped, not messages.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// The `[telemetry]` table: where to send traces.
///
/// ```toml
/// [telemetry]
/// endpoint = "http://127.0.0.1:4318"
/// service_name = "ferry-orders"
/// ```
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`
    /// (as `OTEL_EXPORTER_OTLP_ENDPOINT`): traces are posted to
    /// `<endpoint>/v1/traces`. A URL already ending in `/v1/traces` is used
    /// as it is.
    pub endpoint: String,
    /// The `service.name` of the exported spans. Default `ferry`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The OTLP transport: `http/protobuf`, the only one supported.
    #[serde(default)]
    pub protocol: Protocol,
    /// How long one export may take before it is abandoned (its spans are
    /// lost), e.g. `"10s"`. Default 10 s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_service_name() -> String {
    "ferry".to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Protocol {
    /// Protobuf-encoded `ExportTraceServiceRequest`s posted over HTTP.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// A `[telemetry]` table that cannot be used, or an exporter that could
/// not be built. Retrying does not help: the configuration must change.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A key has a value Ferry cannot use.
    #[error("telemetry.{key}: {reason}")]
    Invalid {
        /// The key, e.g. `endpoint`.
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The OTLP exporter could not be built.
    #[error("could not build the otlp exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

impl TelemetryConfig {
    /// Checks the values; each error names its key.
    pub fn validate(&self) -> Result<(), TelemetryError> {
        let invalid = |key, reason: &str| TelemetryError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        match url::Url::parse(&self.endpoint) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => return Err(invalid("endpoint", "expected an http:// or https:// url")),
            Err(e) => return Err(invalid("endpoint", &format!("not a url: {e}"))),
        }
        if self.service_name.trim().is_empty() {
            return Err(invalid("service_name", "must not be empty"));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be more than 0"));
        }
        Ok(())
    }

    /// The URL traces are posted to.
    pub fn traces_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        }
    }
}

/// A running OTLP export: the layer for the `tracing` subscriber, and a
/// flush at shutdown.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Builds the exporter and its batch processor (a background thread).
    /// Nothing is sent until spans end; a collector that is down makes
    /// exports fail quietly, never the daemon.
    pub fn start(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        config.validate()?;
        let exporter = match config.protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(config.traces_url())
                .with_timeout(config.timeout)
                .build()
                .map_err(TelemetryError::Exporter)?,
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        // The relay's and the forwarder's delivery spans are made on the
        // global provider (see `ferry_core::trace::Deliveries`).
        opentelemetry::global::set_tracer_provider(provider.clone());
        ferry_core::trace::enable_delivery_spans(true);
        Ok(Self { provider })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans for
    /// this export. Add it to the subscriber beside the log layer.
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        // No source location or busy/idle times: per span they cost more
        // than the rest of a relay's span, and a message's journey does
        // not need them.
        tracing_opentelemetry::layer()
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_tracer(self.provider.tracer("ferry"))
    }

    /// Sends the spans still queued and stops the exporter (within its
    /// timeout). Call once, after the pipelines have stopped; a failure is
    /// only logged, the spans it concerns are lost.
    pub fn shutdown(self) {
        ferry_core::trace::enable_delivery_spans(false);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing the last spans to the collector failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Result<TelemetryConfig, toml::de::Error> {
        toml::from_str(toml)
    }

    #[test]
    fn defaults_and_the_traces_url() {
        let c = config("endpoint = \"http://127.0.0.1:4318/\"").unwrap();
        assert_eq!(c.service_name, "ferry");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.traces_url(), "http://127.0.0.1:4318/v1/traces");
        let c =
            config("endpoint = \"http://c:4318/v1/traces\"\nprotocol = \"http/protobuf\"").unwrap();
        assert_eq!(c.traces_url(), "http://c:4318/v1/traces");
        c.validate().unwrap();
    }

    #[test]
    fn refuses_unknown_keys_protocols_and_bad_values_by_name() {
        assert!(config("endpoint = \"http://c\"\nendpont = 1")
            .unwrap_err()
            .to_string()
            .contains("endpont"));
        assert!(config("endpoint = \"http://c\"\nprotocol = \"grpc\"")
            .unwrap_err()
            .to_string()
            .contains("http/protobuf"));
        let err = config("endpoint = \"127.0.0.1:4318\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().starts_with("telemetry.endpoint:"), "{err}");
        let err = config("endpoint = \"http://c\"\nservice_name = \" \"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("telemetry.service_name:"),
            "{err}"
        );
    }
}
