//! The operations themselves, in one place: the admin API and the console
//! both call [`Admin`], so that what an operator may see and do, the role
//! checks and the audit log are the same whichever way they come in.

mod browse;
mod bulk;
mod change;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::overview::{Component, ComponentKind, Sample};
use crate::{AdminConfig, AdminError, Caller, Daemon, History, NamedStore};

pub use bulk::{BulkAction, FilterView, JobId, JobView};
pub use change::Replayed;

/// Samples kept per component for the sparklines (10 minutes at the
/// default 5 s).
const SAMPLES_KEPT: usize = 120;

/// The admin layer of one process: its daemon, configuration, the history
/// behind the sparklines and the bulk jobs it runs. Clones share all of it.
#[derive(Clone)]
pub struct Admin {
    daemon: Arc<dyn Daemon>,
    config: Arc<AdminConfig>,
    history: History,
    jobs: bulk::Jobs,
    /// Cancelled by [`Admin::finish_jobs`]: bulk jobs stop at their next
    /// chunk.
    stopping: CancellationToken,
}

/// What [`Admin::overview`] answers: every component with its rate and
/// recent samples.
#[derive(Clone, Debug, Serialize)]
pub struct OverviewView {
    /// When it was read.
    pub at: DateTime<Utc>,
    /// The stores by name (`?store=`), the default first.
    pub stores: Vec<String>,
    /// Everything the process runs.
    pub components: Vec<ComponentView>,
}

/// One component in an [`OverviewView`].
#[derive(Clone, Debug, Serialize)]
pub struct ComponentView {
    /// The component as the daemon reports it now.
    #[serde(flatten)]
    pub component: Component,
    /// Items handed on per second, between the last two samples.
    pub rate: Option<f64>,
    /// Its recent samples, oldest first (backlog and lag sparklines).
    pub samples: Vec<Sample>,
    /// For a relay: whether an operator paused its pipeline (`None` when
    /// its store could not be read, or for other kinds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

impl Admin {
    /// The admin layer over `daemon`.
    pub fn new(daemon: Arc<dyn Daemon>, config: AdminConfig) -> Admin {
        Admin {
            daemon,
            config: Arc::new(config),
            history: History::new(SAMPLES_KEPT),
            jobs: bulk::Jobs::default(),
            stopping: CancellationToken::new(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &AdminConfig {
        &self.config
    }

    /// The samples taken so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Records the daemon's overview into the history every
    /// [`AdminConfig::sample_every`] until `shutdown` is cancelled.
    pub fn spawn_sampler(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let admin = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(admin.config.sample_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        admin.history.record(&admin.daemon.overview(), Utc::now());
                    }
                }
            }
        })
    }

    /// The caller presenting `token`, if it is one of the configured ones.
    pub fn caller(&self, token: &[u8]) -> Option<Caller> {
        self.config.caller(token)
    }

    /// The names of the stores (`?store=`), the default first; from memory,
    /// no database read.
    pub fn store_names(&self) -> Vec<String> {
        self.daemon.stores().into_iter().map(|s| s.name).collect()
    }

    /// The store called `name`, or the default store (the daemon's first)
    /// for `None`; 404 naming it when there is no such store.
    pub fn store(&self, name: Option<&str>) -> Result<NamedStore, AdminError> {
        let stores = self.daemon.stores();
        match name {
            None => stores
                .into_iter()
                .next()
                .ok_or_else(|| AdminError::NotFound("this process uses no store".to_owned())),
            Some(name) => {
                let known: Vec<String> = stores.iter().map(|s| s.name.clone()).collect();
                stores.into_iter().find(|s| s.name == name).ok_or_else(|| {
                    AdminError::NotFound(format!("no store `{name}`; known: {}", known.join(", ")))
                })
            }
        }
    }

    /// Everything the process runs, with rates, sparkline samples and the
    /// relays' pause flags (one small read per store).
    pub async fn overview(&self) -> OverviewView {
        let overview = self.daemon.overview();
        let stores = self.daemon.stores();
        let mut paused_by_store = std::collections::BTreeMap::new();
        for store in &stores {
            let names = match store.db.paused().await {
                Ok(list) => Some(list.into_iter().map(|p| p.name).collect::<Vec<String>>()),
                Err(e) => {
                    tracing::warn!(store = %store.name, error = %crate::overview::chain(&e),
                        "admin: could not read the pause flags");
                    None
                }
            };
            paused_by_store.insert(store.name.clone(), names);
        }
        let components = overview
            .components
            .into_iter()
            .map(|c| {
                let paused = (c.kind == ComponentKind::Relay)
                    .then(|| {
                        let store = c.store.as_deref()?;
                        let names = paused_by_store.get(store)?.as_ref()?;
                        Some(names.contains(&c.name))
                    })
                    .flatten();
                ComponentView {
                    rate: self.history.rate(c.kind, &c.name),
                    samples: self.history.samples(c.kind, &c.name),
                    paused,
                    component: c,
                }
            })
            .collect();
        OverviewView {
            at: Utc::now(),
            stores: stores.into_iter().map(|s| s.name).collect(),
            components,
        }
    }

    /// The relay component called `pipeline`, 404 when there is none.
    fn relay(&self, pipeline: &str) -> Result<Component, AdminError> {
        self.daemon
            .overview()
            .components
            .into_iter()
            .find(|c| c.kind == ComponentKind::Relay && c.name == pipeline)
            .ok_or_else(|| AdminError::NotFound(format!("no pipeline `{pipeline}`")))
    }
}

/// Refuses a change to a read-only caller.
fn may_change(caller: &Caller) -> Result<(), AdminError> {
    if caller.may_change() {
        Ok(())
    } else {
        Err(AdminError::Forbidden(format!(
            "the token `{}` is read-only: replay, discard, pause and resume need an admin token",
            caller.name
        )))
    }
}
