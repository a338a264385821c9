//! What the capture asks the MariaDB server, outside the binlog stream:
//! its settings, the binlog's files and end, and the captured tables'
//! columns and primary keys (`information_schema`). Errors become
//! [`CaptureError`]s whose kind says what to do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::ErrorKind;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Row};
use serde::{Deserialize, Serialize};

use crate::capture::CaptureError;
use crate::change::TableId;
use crate::filter::Filter;
use crate::mariadb::values::Kind;

/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Schemas that are the server's own, never captured.
const SYSTEM_SCHEMAS: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// A place in the binary log.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BinlogPosition {
    /// The binlog file's name (`mariadb-bin.000004`).
    pub file: String,
    /// The offset in it.
    pub pos: u64,
}

impl std::fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// Connection options for `url` (`mysql://` or `mariadb://`).
pub fn options(url: &str) -> Result<Opts, CaptureError> {
    let for_driver = match url.strip_prefix("mariadb:") {
        Some(rest) => format!("mysql:{rest}"),
        None => url.to_owned(),
    };
    let opts = Opts::from_url(&for_driver).map_err(|e| {
        CaptureError::permanent(format!(
            "invalid mariadb url `{}`",
            ferry_core::redact_url(url)
        ))
        .with_source(e)
    })?;
    // TCP only: the server's socket path means nothing to a remote reader.
    Ok(OptsBuilder::from_opts(opts).prefer_socket(false).into())
}

/// A new connection, or an unavailable error naming the server.
pub async fn connect(opts: &Opts) -> Result<Conn, CaptureError> {
    let host = format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port());
    match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts.clone())).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(failure(e, &format!("cannot connect to mariadb at {host}"))),
        Err(_) => Err(CaptureError::unavailable(format!(
            "cannot connect to mariadb at {host}: no answer in {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// `e` with what the capture was doing, as a failure of the right kind:
/// a lost or refused connection is unavailable; what needs an operator
/// (bad credentials, an unknown database, a missing privilege) is
/// permanent; anything else transient.
pub fn failure(e: mysql_async::Error, doing: &str) -> CaptureError {
    let kind = match &e {
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => ErrorKind::Unavailable,
        mysql_async::Error::Url(_) => ErrorKind::Permanent,
        mysql_async::Error::Server(s) => match s.code {
            // too many connections, shutting down, killed, lost
            1040 | 1203 | 1053 | 1927 | 2006 | 2013 => ErrorKind::Unavailable,
            // access denied, unknown database, a privilege missing
            1044 | 1045 | 1049 | 1142 | 1227 => ErrorKind::Permanent,
            _ => ErrorKind::Transient,
        },
        mysql_async::Error::Other(_) => ErrorKind::Transient,
    };
    CaptureError::new(kind, doing).with_source(e)
}

/// `e`, when the server refused for want of `privilege`, as the
/// permanent error that names it; else as [`failure`] has it.
pub fn needing(privilege: &str, e: mysql_async::Error, doing: &str) -> CaptureError {
    match &e {
        mysql_async::Error::Server(s) if matches!(s.code, 1045 | 1227) => {
            CaptureError::permanent(format!(
                "{doing}: the user lacks the {privilege} privilege \
                 (GRANT {privilege} ON *.* TO …)"
            ))
            .with_source(e)
        }
        _ => failure(e, doing),
    }
}

/// The server settings the capture depends on.
pub const SETTINGS: [&str; 6] = [
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "log_bin_compress",
    "server_id",
];

/// The global values of [`SETTINGS`].
pub async fn settings(conn: &mut Conn) -> Result<BTreeMap<String, String>, CaptureError> {
    let names: Vec<String> = SETTINGS.iter().map(|s| format!("'{s}'")).collect();
    let rows: Vec<(String, String)> = conn
        .query(format!(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({})",
            names.join(", ")
        ))
        .await
        .map_err(|e| failure(e, "cannot read the server's variables"))?;
    Ok(rows
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect())
}

/// Whether a server with these global variables can be captured: a
/// permanent error naming the setting to change when not.
pub fn judge_settings(vars: &BTreeMap<String, String>) -> Result<(), CaptureError> {
    let is = |name: &str, want: &str| vars.get(name).is_some_and(|v| v.eq_ignore_ascii_case(want));
    let shown = |name: &str| vars.get(name).map_or("unset", String::as_str).to_owned();
    if !is("log_bin", "ON") {
        return Err(CaptureError::permanent(
            "the binary log is off (log_bin = OFF): start mariadbd with --log-bin \
             (and binlog_format=ROW, binlog_row_image=FULL, binlog_row_metadata=FULL)",
        ));
    }
    for (name, want) in [
        ("binlog_format", "ROW"),
        ("binlog_row_image", "FULL"),
        ("binlog_row_metadata", "FULL"),
    ] {
        if !is(name, want) {
            return Err(CaptureError::permanent(format!(
                "{name} is {}, the binlog capture needs {want}: set {name}={want} in the \
                 server's configuration (SET GLOBAL {name}='{want}' until it restarts)",
                shown(name)
            )));
        }
    }
    if is("log_bin_compress", "ON") {
        return Err(CaptureError::permanent(
            "log_bin_compress is ON: compressed binlog events are not decoded; \
             set log_bin_compress=OFF",
        ));
    }
    Ok(())
}

/// The end of the binary log: where a capture that has nothing saved and
/// takes no snapshot starts.
pub async fn binlog_end(conn: &mut Conn) -> Result<BinlogPosition, CaptureError> {
    // SHOW BINLOG STATUS is MariaDB 10.5's name; SHOW MASTER STATUS the
    // older one, still understood.
    let row: Option<Row> = conn.query_first("SHOW MASTER STATUS").await.map_err(|e| {
        needing(
            "BINLOG MONITOR",
            e,
            "cannot read the binlog's end (SHOW MASTER STATUS)",
        )
    })?;
    let row = row.ok_or_else(|| {
        CaptureError::permanent(
            "the server reports no binary log (SHOW MASTER STATUS is empty): \
             start mariadbd with --log-bin",
        )
    })?;
    position_of(&row, 0, 1)
        .ok_or_else(|| CaptureError::transient("SHOW MASTER STATUS returned no file and position"))
}

fn position_of(row: &Row, file: usize, pos: usize) -> Option<BinlogPosition> {
    Some(BinlogPosition {
        file: row.get_opt::<String, _>(file)?.ok()?,
        pos: row.get_opt::<u64, _>(pos)?.ok()?,
    })
}

/// The binlog files the server still has, oldest first, with their sizes.
pub async fn binlog_files(conn: &mut Conn) -> Result<Vec<(String, u64)>, CaptureError> {
    let rows: Vec<Row> = conn.query("SHOW BINARY LOGS").await.map_err(|e| {
        needing(
            "BINLOG MONITOR",
            e,
            "cannot list the binlog files (SHOW BINARY LOGS)",
        )
    })?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let p = position_of(r, 0, 1)?;
            Some((p.file, p.pos))
        })
        .collect())
}

/// A permanent error unless the server still has `at`'s file.
pub async fn check_not_purged(conn: &mut Conn, at: &BinlogPosition) -> Result<(), CaptureError> {
    let files = binlog_files(conn).await?;
    if files.iter().any(|(f, _)| *f == at.file) {
        Ok(())
    } else {
        Err(purged(at))
    }
}

/// The error for a saved position whose file the server no longer has.
pub fn purged(at: &BinlogPosition) -> CaptureError {
    CaptureError::permanent(format!(
        "the binlog position {at} is gone (purged); run `ferry cdc drop` and re-snapshot"
    ))
}

/// A captured table's columns and primary key, from
/// `information_schema`.
#[derive(Clone, Debug)]
pub struct TableInfo {
    /// The table.
    pub id: TableId,
    /// Its columns, in order, with how their values map.
    pub columns: Vec<(String, Kind)>,
    /// The primary key's columns, in key order (never empty).
    pub key: Vec<String>,
}

impl TableInfo {
    /// The kind of column `name`.
    pub fn kind(&self, name: &str) -> Option<&Kind> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, k)| k)
    }
}

/// The permanent error for a captured table without a primary key.
pub fn no_primary_key(table: &TableId) -> CaptureError {
    CaptureError::permanent(format!(
        "table {table} has no primary key: add a primary key to capture it, \
         or leave it out of the capture's tables"
    ))
}

/// `table`'s columns and key; `None` when it does not exist (any more);
/// a permanent error when it has no primary key.
pub async fn table_info(
    conn: &mut Conn,
    table: &TableId,
) -> Result<Option<Arc<TableInfo>>, CaptureError> {
    let doing = || format!("cannot read the columns of {table}");
    let params = (table.schema.as_str(), table.name.as_str());
    let columns: Vec<(String, String, String, Option<String>)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_SET_NAME
             FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
             ORDER BY ORDINAL_POSITION",
            params,
        )
        .await
        .map_err(|e| failure(e, &doing()))?;
    if columns.is_empty() {
        return Ok(None);
    }
    let key: Vec<String> = conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY'
             ORDER BY ORDINAL_POSITION",
            params,
        )
        .await
        .map_err(|e| failure(e, &doing()))?;
    if key.is_empty() {
        return Err(no_primary_key(table));
    }
    // MariaDB's JSON is a LONGTEXT with a column-level CHECK (json_valid).
    let json: Vec<String> = conn
        .exec(
            "SELECT CONSTRAINT_NAME FROM information_schema.CHECK_CONSTRAINTS
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ? AND LEVEL = 'Column'
               AND CHECK_CLAUSE LIKE 'json_valid(%'",
            params,
        )
        .await
        .map_err(|e| failure(e, &doing()))?;
    let columns = columns
        .into_iter()
        .map(|(name, data_type, column_type, charset)| {
            let is_json = json.contains(&name);
            let kind = Kind::of(
                &data_type.to_ascii_lowercase(),
                &column_type.to_ascii_lowercase(),
                charset.as_deref(),
                is_json,
            );
            (name, kind)
        })
        .collect();
    Ok(Some(Arc::new(TableInfo {
        id: table.clone(),
        columns,
        key,
    })))
}

/// The base tables `filter` captures, sorted by schema and name.
pub async fn captured_tables(
    conn: &mut Conn,
    filter: &Filter,
) -> Result<Vec<TableId>, CaptureError> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES
             WHERE TABLE_TYPE = 'BASE TABLE'
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await
        .map_err(|e| failure(e, "cannot list the tables"))?;
    Ok(rows
        .into_iter()
        .map(|(s, n)| TableId::new(s, n))
        .filter(|t| captures(filter, t))
        .collect())
}

/// Whether `filter` captures `table` (never the server's own schemas).
pub fn captures(filter: &Filter, table: &TableId) -> bool {
    !SYSTEM_SCHEMAS.contains(&table.schema.as_str()) && filter.captures(table)
}

/// `name` quoted as an identifier.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The captured tables' columns and keys, read once per table and kept
/// until a DDL statement goes by in the binlog.
pub struct Schema {
    opts: Opts,
    conn: Option<Conn>,
    tables: std::collections::HashMap<TableId, Option<Arc<TableInfo>>>,
}

impl Schema {
    /// A cache reading through `conn` (reconnecting with `opts`).
    pub fn new(opts: Opts, conn: Option<Conn>) -> Self {
        Self {
            opts,
            conn,
            tables: Default::default(),
        }
    }

    /// `table`'s columns and key; `None` when it does not exist.
    pub async fn info(&mut self, table: &TableId) -> Result<Option<Arc<TableInfo>>, CaptureError> {
        if let Some(known) = self.tables.get(table) {
            return Ok(known.clone());
        }
        let conn = self.conn().await?;
        let info = match table_info(conn, table).await {
            Ok(info) => info,
            Err(e) => {
                if e.kind == ErrorKind::Unavailable {
                    self.conn = None;
                }
                return Err(e);
            }
        };
        self.tables.insert(table.clone(), info.clone());
        Ok(info)
    }

    /// Forgets every table: a DDL statement may have changed any.
    pub fn invalidate(&mut self) {
        self.tables.clear();
    }

    /// The query connection, connecting when there is none.
    pub async fn conn(&mut self) -> Result<&mut Conn, CaptureError> {
        if self.conn.is_none() {
            self.conn = Some(connect(&self.opts).await?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| CaptureError::unavailable("no connection to mariadb"))
    }

    /// Drops the query connection (after an error on it).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Closes the query connection.
    pub async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            ("log_bin", "ON"),
            ("binlog_format", "ROW"),
            ("binlog_row_image", "FULL"),
            ("binlog_row_metadata", "FULL"),
            ("log_bin_compress", "OFF"),
        ]
    }

    fn refusal(change: (&'static str, &'static str)) -> String {
        let mut v = good();
        v.retain(|(k, _)| *k != change.0);
        v.push(change);
        let e = judge_settings(&vars(&v)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        e.message
    }

    #[test]
    fn settings_are_judged_naming_what_to_change() {
        assert!(judge_settings(&vars(&good())).is_ok());
        assert!(refusal(("log_bin", "OFF")).contains("start mariadbd with --log-bin"));
        let m = refusal(("binlog_format", "MIXED"));
        assert!(
            m.contains("binlog_format is MIXED") && m.contains("binlog_format=ROW"),
            "{m}"
        );
        let m = refusal(("binlog_row_image", "MINIMAL"));
        assert!(m.contains("binlog_row_image=FULL"), "{m}");
        let m = refusal(("binlog_row_metadata", "MINIMAL"));
        assert!(m.contains("binlog_row_metadata=FULL"), "{m}");
        assert!(refusal(("log_bin_compress", "ON")).contains("log_bin_compress=OFF"));
        let e = judge_settings(&BTreeMap::new()).unwrap_err();
        assert!(e.message.contains("--log-bin"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("a`b"), "`a``b`");
    }

    #[test]
    fn positions_read_as_file_colon_offset() {
        let p = BinlogPosition {
            file: "mariadb-bin.000004".into(),
            pos: 330,
        };
        assert_eq!(p.to_string(), "mariadb-bin.000004:330");
        assert!(purged(&p)
            .message
            .contains("mariadb-bin.000004:330 is gone (purged)"));
    }
}
