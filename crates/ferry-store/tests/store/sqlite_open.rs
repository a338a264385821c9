//! Several processes opening one new SQLite file at the same moment (two
//! importers, a relay and a producer started together) all get a pool.

use ferry_store::{ConnectOptions, Database};
use ferry_testkit::SqliteTestDb;

/// Each round opens a fresh file from four pools at once. Before opens were
/// tried again on `SQLITE_BUSY`, one of them failed with "database is
/// locked" within a few rounds: SQLite refuses, without waiting, one of two
/// connections switching the same file to WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_opens_of_a_new_file_all_succeed() {
    for round in 0..40 {
        let file = SqliteTestDb::create();
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = file.url.clone();
                tokio::spawn(async move {
                    let options = ConnectOptions {
                        max_connections: 2,
                        lease: None,
                    };
                    Database::connect_with(&url, &options).await
                })
            })
            .collect();
        for open in opens {
            if let Err(e) = open.await.unwrap() {
                panic!("round {round}: an open failed: {e}");
            }
        }
    }
}
