//! `ferry-bench ceiling`: how fast the database takes the drain's rows.
//!
//! The same rows as `drain` (same payload, same keys) are INSERTed into a
//! fresh, migrated `ferry_outbox` (all its indexes and its NOTIFY trigger)
//! with the same multi-row statement as the fill, one statement per
//! transaction, timed from the first statement to the last commit:
//! 100 rows per transaction from 1 client and (PostgreSQL) from `--clients`
//! clients; 1,000 per statement from 1 client (the fill's shape); and 1 row
//! per transaction (what single-message producers pay).

use std::sync::Arc;

use anyhow::{ensure, Context};

use crate::report::{median, ratio, thousands, Figure, Tsv};
use crate::scratch::Server;
use crate::workload::{self, PayloadShape};

/// `ferry-bench ceiling` options.
#[derive(clap::Args, Clone, Debug)]
pub struct CeilingArgs {
    /// Where the scratch databases are made (see `drain --database`).
    #[arg(long)]
    pub database: String,
    /// Rows per measurement (the 1-row-per-transaction ones use
    /// `--single-row-messages`).
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Concurrent clients of the multi-client measurements (PostgreSQL).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Rows for the 1-row-per-transaction measurements; default
    /// `messages / 20`; 0 skips them.
    #[arg(long)]
    pub single_row_messages: Option<usize>,
    /// Distinct ordering keys (as in `drain`).
    #[arg(long, default_value_t = 1000)]
    pub keys: u32,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// One way of inserting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Rows per statement (= per transaction).
    pub rows_per_txn: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Rows in all.
    pub rows: usize,
}

impl Shape {
    /// E.g. `insert 100 rows/txn x4`.
    pub fn label(&self) -> String {
        let per = if self.rows_per_txn == 1 {
            "1 row/txn".to_owned()
        } else {
            format!("{} rows/txn", self.rows_per_txn)
        };
        format!("insert {per} x{}", self.clients)
    }

    fn key(&self) -> String {
        format!("insert_{}_per_txn_x{}", self.rows_per_txn, self.clients)
    }
}

/// The medians of a `ceiling`, one per shape, in the order measured.
#[derive(Clone, Debug)]
pub struct CeilingSummary {
    /// `postgres` or `sqlite`.
    pub database: &'static str,
    /// `(shape, rows/s)`.
    pub rates: Vec<(Shape, f64)>,
}

impl CeilingSummary {
    /// The median rate of the shape with these rows per transaction and clients.
    pub fn rate(&self, rows_per_txn: usize, clients: usize) -> Option<f64> {
        self.rates
            .iter()
            .find(|(s, _)| s.rows_per_txn == rows_per_txn && s.clients == clients)
            .map(|(_, r)| *r)
    }
}

/// Runs the ceiling measurements; prints each run and the medians.
pub async fn run(args: &CeilingArgs, tsv: &Tsv) -> anyhow::Result<CeilingSummary> {
    let server = crate::drain::server_for(&args.database, args.messages, args.runs)?;
    let db_label = server.label();
    let n = args.messages;
    let single = args.single_row_messages.unwrap_or(n / 20);
    let many = match server {
        Server::Postgres { .. } => args.clients.max(1),
        // One writer at a time: more clients would only queue.
        Server::Sqlite { .. } => 1,
    };
    let mut shapes = vec![Shape {
        rows_per_txn: 100,
        clients: 1,
        rows: n,
    }];
    if many > 1 {
        shapes.push(Shape {
            rows_per_txn: 100,
            clients: many,
            rows: n,
        });
    }
    shapes.push(Shape {
        rows_per_txn: 1000,
        clients: 1,
        rows: n,
    });
    if single > 0 {
        shapes.push(Shape {
            rows_per_txn: 1,
            clients: 1,
            rows: single,
        });
        if many > 1 {
            shapes.push(Shape {
                rows_per_txn: 1,
                clients: many,
                rows: single,
            });
        }
    }
    println!(
        "== ceiling {db_label}: the drain's rows (~{}-byte payload, {} keys) INSERTed into a fresh, migrated ferry_outbox, one multi-row statement per transaction, {} run(s)",
        workload::payload(0, PayloadShape::Order).len(),
        args.keys,
        args.runs
    );
    let described = server.describe().await?;
    println!("   database: {described}");
    println!(
        "   {} rows per measurement ({} for 1 row/txn); baseline: {}",
        thousands(n as f64),
        thousands(single as f64),
        shapes[0].label()
    );
    let settings = format!(
        "messages={n} single_row_messages={single} keys={}",
        args.keys
    );
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); shapes.len()];
    for r in 1..=args.runs {
        let mut line = Vec::new();
        let mut base = None;
        for (i, shape) in shapes.iter().enumerate() {
            let rate = measure(&server, shape, args.keys).await?;
            base.get_or_insert(rate);
            line.push(format!("{} {} rows/s", shape.label(), thousands(rate)));
            tsv.append(&Figure {
                command: "ceiling",
                database: db_label.to_owned(),
                server: described.clone(),
                figure: shape.key(),
                run: r,
                value: rate,
                unit: "rows/s",
                baseline: if i == 0 {
                    String::new()
                } else {
                    shapes[0].key()
                },
                baseline_value: (i > 0).then_some(base.unwrap_or(f64::NAN)),
                settings: settings.clone(),
                notes: format!("rows={}", shape.rows),
                ..Figure::default()
            })?;
            all[i].push(rate);
        }
        println!("   run {r}/{}: {}", args.runs, line.join(" | "));
    }
    let rates: Vec<(Shape, f64)> = shapes
        .iter()
        .copied()
        .zip(all.iter().map(|v| median(v)))
        .collect();
    let base = rates[0].1;
    println!(
        "   median of {}: {}",
        args.runs,
        rates
            .iter()
            .enumerate()
            .map(|(i, (s, v))| if i == 0 {
                format!("{} {} rows/s", s.label(), thousands(*v))
            } else {
                format!(
                    "{} {} rows/s ({}x)",
                    s.label(),
                    thousands(*v),
                    ratio(*v, base)
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    );
    Ok(CeilingSummary {
        database: db_label,
        rates,
    })
}

async fn measure(server: &Server, shape: &Shape, keys: u32) -> anyhow::Result<f64> {
    let rows = Arc::new(workload::rows(shape.rows, keys, PayloadShape::Order));
    server
        .with_fresh(shape.clients as u32 + 1, |_, db| async move {
            let took = workload::insert_all(&db, rows, shape.rows_per_txn, shape.clients).await?;
            let count = workload::count(&db).await?;
            ensure!(
                count as usize == shape.rows,
                "{count} rows inserted, {} expected",
                shape.rows
            );
            Ok(shape.rows as f64 / took.as_secs_f64())
        })
        .await
        .with_context(|| format!("ceiling: {}", shape.label()))
}
