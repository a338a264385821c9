//! What a PostgreSQL log capture reads, from where.

use serde::{Deserialize, Serialize};

use crate::capture::CaptureError;
use crate::filter::Filter;

pub use crate::capture::SnapshotMode;

/// A capture of PostgreSQL's log through logical replication (`pgoutput`).
///
/// ```toml
/// url = "postgres://ferry@db:5432/shop"
/// name = "shop"
/// tables = { include = ["public.orders", "public.customers"] }
/// snapshot = "initial"
/// snapshot_chunk = 1000
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgLogConfig {
    /// The captured database's URL (`postgres://user@host:5432/db`). The
    /// user needs the `REPLICATION` attribute (or superuser), and the
    /// server `wal_level = logical`.
    pub url: String,
    /// The capture's name: part of every change id (so it must not change
    /// while changes are in flight) and of the default slot and
    /// publication names.
    pub name: String,
    /// The replication slot the capture reads and confirms; default
    /// `ferry_<name>`. Slots are cluster-wide: two captures never share one.
    #[serde(default)]
    pub slot: Option<String>,
    /// The publication naming the published tables; default
    /// `ferry_<name>`.
    #[serde(default)]
    pub publication: Option<String>,
    /// Create the slot and the publication when they are missing (the
    /// default). `false`: take them as given (created by an administrator)
    /// and refuse to start when either is absent.
    #[serde(default = "create_default")]
    pub create: bool,
    /// Tables captured and columns left out. A publication that Ferry
    /// creates is `FOR TABLE` the tables `include` names (as they exist
    /// then), or `FOR ALL TABLES` when `include` is empty; changes are
    /// filtered again as they are read, so `exclude` and Ferry's own
    /// `ferry_*` tables never leave.
    #[serde(default)]
    pub tables: Filter,
    /// What a first start does, when Ferry creates the slot: `initial` (the
    /// default) reads the captured tables' rows as `r` changes in the
    /// snapshot the slot exports, then streams from the slot's consistent
    /// point; `never` only streams. A slot Ferry did not create (`create =
    /// false`, or one made by hand) gets no snapshot. A snapshot begun is
    /// finished after a restart, whatever this says. Its progress is kept
    /// in the captured database (table `ferry_cdc_offsets`, created at
    /// start: the user needs `CREATE` on its schema).
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Rows read per snapshot chunk (and at most per `read`). Each chunk of
    /// a table with a primary key (or replica identity index) ends with a
    /// checkpoint, so a crash reads again only what was not acknowledged.
    #[serde(default = "default_chunk")]
    pub snapshot_chunk: usize,
}

fn create_default() -> bool {
    true
}

fn default_chunk() -> usize {
    1000
}

impl PgLogConfig {
    /// A capture of `url` named `name`, everything else by default.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: name.into(),
            slot: None,
            publication: None,
            create: true,
            tables: Filter::default(),
            snapshot: SnapshotMode::Initial,
            snapshot_chunk: default_chunk(),
        }
    }

    /// The slot's name: `slot`, or `ferry_<name>`.
    pub fn slot_name(&self) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| default_name(&self.name))
    }

    /// The publication's name: `publication`, or `ferry_<name>`.
    pub fn publication_name(&self) -> String {
        self.publication
            .clone()
            .unwrap_or_else(|| default_name(&self.name))
    }

    /// Checks what can be checked without the server: a PostgreSQL URL,
    /// a name, slot and publication names PostgreSQL accepts, a snapshot
    /// chunk of at least one row.
    pub fn validate(&self) -> Result<(), CaptureError> {
        let url = url::Url::parse(&self.url).map_err(|e| {
            CaptureError::permanent("postgres capture: url is not a URL").with_source(e)
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(CaptureError::permanent(
                "postgres capture: url must start with postgres:// or postgresql://",
            ));
        }
        if url.path().trim_start_matches('/').is_empty() {
            return Err(CaptureError::permanent(
                "postgres capture: url names no database (postgres://host/database)",
            ));
        }
        if url.query_pairs().any(|(k, _)| k == "replication") {
            return Err(CaptureError::permanent(
                "postgres capture: leave `replication` out of url, the capture sets it",
            ));
        }
        if self.name.is_empty() {
            return Err(CaptureError::permanent("postgres capture: name is empty"));
        }
        if self.snapshot_chunk == 0 {
            return Err(CaptureError::permanent(
                "postgres capture: snapshot_chunk must be at least 1",
            ));
        }
        check_identifier("slot", &self.slot_name())?;
        check_identifier("publication", &self.publication_name())
    }
}

/// `ferry_<name>`, lowercased with anything else than `[a-z0-9_]` as `_`
/// (a slot name allows nothing more).
fn default_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    format!("ferry_{name}")
}

/// Slot names are `[a-z0-9_]{1,63}` (PostgreSQL refuses anything else);
/// publication names are held to the same, so that neither needs quoting.
fn check_identifier(what: &str, name: &str) -> Result<(), CaptureError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(CaptureError::permanent(format!(
            "postgres capture: {what} name {name:?} must be 1 to 63 of a-z, 0-9 and _"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_to_ferry_and_the_capture() {
        let c = PgLogConfig::new("postgres://h/db", "Shop-EU");
        assert_eq!(c.slot_name(), "ferry_shop_eu");
        assert_eq!(c.publication_name(), "ferry_shop_eu");
        c.validate().unwrap();
    }

    #[test]
    fn reads_from_toml_and_refuses_unknown_fields() {
        let c: PgLogConfig = toml_like(
            r#"{"url": "postgres://h/db", "name": "a", "create": false,
                "tables": {"include": ["public.t"]}}"#,
        )
        .unwrap();
        assert!(!c.create);
        assert_eq!(c.tables.include, ["public.t"]);
        assert_eq!(c.snapshot, SnapshotMode::Initial);
        assert_eq!(c.snapshot_chunk, 1000);
        let c = toml_like(
            r#"{"url": "postgres://h/db", "name": "a", "snapshot": "never",
                "snapshot_chunk": 50}"#,
        )
        .unwrap();
        assert_eq!((c.snapshot, c.snapshot_chunk), (SnapshotMode::Never, 50));
        assert!(
            toml_like(r#"{"url": "postgres://h/db", "name": "a", "snapshot": "once"}"#).is_err()
        );
        assert!(toml_like(r#"{"url": "postgres://h/db", "name": "a", "slots": "x"}"#).is_err());
    }

    fn toml_like(json: &str) -> Result<PgLogConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn refuses_what_postgres_would() {
        let mut c = PgLogConfig::new("postgres://h/db", "a");
        c.slot = Some("Bad-Slot".into());
        assert!(c.validate().is_err());
        let c = PgLogConfig::new("mysql://h/db", "a");
        assert!(c.validate().is_err());
        let c = PgLogConfig::new("postgres://h", "a");
        assert!(c.validate().is_err());
        let mut c = PgLogConfig::new("postgres://h/db", "a");
        c.snapshot_chunk = 0;
        assert!(c.validate().is_err());
    }
}
