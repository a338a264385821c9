//! The sink a drain delivers to, set up for one run and torn down after.
//!
//! * `null`: [`ferry_adapters::NullSink`].
//! * `nats`: [`ferry_adapters::NatsSink`] publishing to `bench.<random>.orders`
//!   in a JetStream stream made for the run (file storage, the server's
//!   default duplicate window of 2 minutes, so JetStream tracks every
//!   `Nats-Msg-Id` of the run, as it does in production) and deleted after.
//! * `http`: [`ferry_adapters::HttpSink`] posting to an in-process
//!   [`Receiver`] on its own thread and runtime.

use std::sync::Arc;

use anyhow::Context;
use async_nats::jetstream;
use ferry_adapters::{NullSink, SinkConfig, SinkConfigError};
use ferry_core::Sink;

use crate::receiver::Receiver;

/// Which sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    /// Accepts everything in memory.
    Null,
    /// NATS JetStream.
    Nats,
    /// A webhook.
    Http,
}

impl SinkKind {
    /// `null`, `nats`, `http`.
    pub fn label(self) -> &'static str {
        match self {
            SinkKind::Null => "null",
            SinkKind::Nats => "nats",
            SinkKind::Http => "http",
        }
    }
}

enum Teardown {
    Null(Arc<NullSink>),
    Nats {
        jetstream: jetstream::Context,
        stream: String,
    },
    Http(Receiver),
}

/// A sink ready for one run.
pub struct Destination {
    /// The sink to hand to the relay.
    pub sink: Arc<dyn Sink>,
    /// One line saying what it is.
    pub description: String,
    teardown: Teardown,
}

impl Destination {
    /// Sets up `kind` (`nats_url` is only used for `nats`).
    pub async fn start(kind: SinkKind, nats_url: &str) -> anyhow::Result<Self> {
        match kind {
            SinkKind::Null => {
                let null = Arc::new(NullSink::new());
                Ok(Self {
                    sink: null.clone(),
                    description: "null sink (in memory)".to_owned(),
                    teardown: Teardown::Null(null),
                })
            }
            SinkKind::Nats => {
                let tag = format!("{:08x}", rand::random::<u32>());
                let prefix = format!("bench.{tag}.");
                let stream = format!("FERRY_BENCH_{tag}");
                let client = async_nats::connect(nats_url)
                    .await
                    .with_context(|| format!("cannot connect to nats at {nats_url}"))?;
                let js = jetstream::new(client);
                let mut created = js
                    .create_stream(jetstream::stream::Config {
                        name: stream.clone(),
                        subjects: vec![format!("{prefix}>")],
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("cannot create jetstream stream {stream}"))?;
                let info = created.info().await?;
                let description = format!(
                    "nats jetstream stream {stream} ({:?} storage, duplicate window {:?}), subjects {prefix}>",
                    info.config.storage, info.config.duplicate_window
                );
                let url = format!("{nats_url}?subject_prefix={prefix}&stream={stream}");
                let built: Result<_, SinkConfigError> =
                    async { SinkConfig::from_url(&url)?.build().await }.await;
                let sink = match built {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = js.delete_stream(&stream).await;
                        return Err(anyhow::Error::new(e).context("cannot start the nats sink"));
                    }
                };
                Ok(Self {
                    sink,
                    description,
                    teardown: Teardown::Nats {
                        jetstream: js,
                        stream,
                    },
                })
            }
            SinkKind::Http => {
                let receiver = Receiver::start()?;
                let sink = SinkConfig::from_url(&receiver.url())?.build().await?;
                Ok(Self {
                    sink,
                    description: format!(
                        "http sink (default settings) -> in-process receiver {} (own thread, current-thread runtime, answers 200 at once; shares the cores with relay and database)",
                        receiver.url()
                    ),
                    teardown: Teardown::Http(receiver),
                })
            }
        }
    }

    /// What reached the destination: messages accepted (null), stored in
    /// the stream (nats, after JetStream's de-duplication) or requests
    /// answered (http, duplicates included).
    pub async fn received(&self) -> anyhow::Result<u64> {
        Ok(match &self.teardown {
            Teardown::Null(null) => null.delivered(),
            Teardown::Nats { jetstream, stream } => {
                let mut s = jetstream.get_stream(stream).await?;
                s.info().await?.state.messages
            }
            Teardown::Http(receiver) => receiver.requests(),
        })
    }

    /// Tears it down (deletes the stream, stops the receiver).
    pub async fn stop(self) {
        let Destination { sink, teardown, .. } = self;
        // The sink's connections close first, so the receiver can stop.
        drop(sink);
        match teardown {
            Teardown::Null(_) => {}
            Teardown::Nats { jetstream, stream } => {
                if let Err(e) = jetstream.delete_stream(&stream).await {
                    eprintln!("warning: could not delete jetstream stream {stream}: {e}");
                }
            }
            Teardown::Http(receiver) => {
                tokio::task::spawn_blocking(move || receiver.stop())
                    .await
                    .ok();
            }
        }
    }
}
