//! `batch`: ferry-batch's sender and receiver, each beside a baseline
//! measured in the same run (`psql`'s `COPY … TO STDOUT WITH CSV` and
//! `COPY … FROM STDIN`). What each figure is: `bench/README.md`.

mod export;
mod import;
mod transfer;

use crate::report::Tsv;

/// `ferry-bench batch …`.
#[derive(clap::Args, Debug)]
pub struct BatchArgs {
    #[command(subcommand)]
    command: BatchCommand,
}

#[derive(clap::Subcommand, Debug)]
enum BatchCommand {
    /// Export of a 10-column PostgreSQL table to CSV, CSV + gzip and JSON
    /// Lines files, beside `psql` COPY … TO STDOUT WITH CSV of the same
    /// table; the process's peak RSS.
    ExportPg(export::ExportArgs),
    /// Import of one CSV batch (from the same table) into PostgreSQL,
    /// MariaDB and SQLite, beside `psql` COPY … FROM STDIN, `LOAD DATA
    /// LOCAL INFILE` and `sqlite3 .import` of the same file.
    Import(import::ImportArgs),
    /// One file put by Ferry's SFTP and S3 locations, beside OpenSSH's
    /// `sftp` and boto3's `upload_file` to the same servers.
    Transfer(transfer::TransferArgs),
}

/// Runs one `batch` sub-command.
pub async fn run(args: BatchArgs, tsv: &Tsv) -> anyhow::Result<()> {
    match args.command {
        BatchCommand::ExportPg(a) => export::run(&a, tsv).await,
        BatchCommand::Import(a) => import::run(&a, tsv).await,
        BatchCommand::Transfer(a) => transfer::run(&a, tsv).await,
    }
}
