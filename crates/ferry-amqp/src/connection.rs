//! One connection to RabbitMQ, made again when it was lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use crate::AmqpConfig;

/// Why no channel could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChannelError {
    /// The server did not answer within the timeout.
    #[error("rabbitmq did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// Connecting or opening the channel failed.
    #[error("could not open a rabbitmq channel")]
    Open(#[source] lapin::Error),
    /// The server refused to declare the exchange (another type, no
    /// permission).
    #[error("rabbitmq refused to declare exchange `{exchange}`")]
    Exchange {
        /// The exchange.
        exchange: String,
        /// The server's answer.
        #[source]
        source: lapin::Error,
    },
}

impl ChannelError {
    /// Whether the server as a whole is unreachable, rather than refusing a
    /// request of ours.
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            ChannelError::TimedOut(_) => true,
            ChannelError::Open(e) => !e.is_amqp_soft_error(),
            ChannelError::Exchange { source, .. } => !source.is_amqp_error(),
        }
    }
}

/// The shared connection of a sink or a subscriber. A lost connection is
/// replaced on the next request; the loss and the recovery are each logged
/// once.
pub(crate) struct Connector {
    pub(crate) config: AmqpConfig,
    role: &'static str,
    current: Mutex<Option<Arc<Connection>>>,
    /// Whether the last attempt reached the server, so that each change is
    /// logged once rather than each attempt.
    up: AtomicBool,
}

impl Connector {
    pub(crate) fn new(config: AmqpConfig, role: &'static str) -> Self {
        Self {
            config,
            role,
            current: Mutex::new(None),
            up: AtomicBool::new(true),
        }
    }

    /// A new channel on the current connection (connecting first when there
    /// is none or it was lost), with the exchange declared.
    pub(crate) async fn channel(&self) -> Result<(Arc<Connection>, Channel), ChannelError> {
        let timeout = self.config.timeout;
        let result = match tokio::time::timeout(timeout, self.open()).await {
            Ok(result) => result,
            Err(_) => Err(ChannelError::TimedOut(timeout)),
        };
        match &result {
            Ok(_) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(role = self.role, server = %self.server(), "rabbitmq is reachable again");
                }
            }
            Err(e) if e.is_unreachable() => {
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        role = self.role,
                        server = %self.server(),
                        error = %ferry_core::error_chain(e),
                        "rabbitmq is not reachable; retrying on the next call"
                    );
                }
            }
            Err(_) => {}
        }
        result
    }

    async fn open(&self) -> Result<(Arc<Connection>, Channel), ChannelError> {
        let connection = {
            let mut current = self.current.lock().await;
            match &*current {
                Some(connection) if connection.status().connected() => connection.clone(),
                _ => {
                    // Dropped here while another request may still use it:
                    // its channels keep it open until they are done.
                    *current = None;
                    let properties = ConnectionProperties::default()
                        .with_connection_name(format!("ferry-{}", self.role).into());
                    let connection = Connection::connect(self.config.url.as_str(), properties)
                        .await
                        .map_err(ChannelError::Open)?;
                    let connection = Arc::new(connection);
                    *current = Some(connection.clone());
                    connection
                }
            }
        };
        let channel = connection
            .create_channel()
            .await
            .map_err(ChannelError::Open)?;
        channel
            .exchange_declare(
                self.config.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| ChannelError::Exchange {
                exchange: self.config.exchange.clone(),
                source,
            })?;
        Ok((connection, channel))
    }

    /// The server, without credentials, for logs.
    pub(crate) fn server(&self) -> String {
        self.config.redacted_url()
    }
}
