//! The event store: one suite on SQLite, PostgreSQL and MariaDB, plus the
//! read-horizon tests for the servers.

use super::*;
use crate::each_db;
use ferry_store::event_store::{EventQuery, NewEvent, StoredEvent, MAX_PAGE};

fn page(offset: i64, limit: u32) -> EventQuery {
    EventQuery {
        offset,
        limit,
        ..EventQuery::default()
    }
}

async fn read_all(db: &Database) -> Vec<StoredEvent> {
    db.read_events(&page(0, MAX_PAGE)).await.unwrap().events
}

each_db!(
    append_and_read_round_trip_every_field,
    Retention::Delete,
    |env: Env| async move {
        // Bind the whole Env: capturing only env.db would drop the test
        // database at once.
        let env = env;
        let binary = vec![0u8, 159, 146, 150, b'x', 0];
        let sent = vec![
            NewEvent::new("order.cancelled", br#"{"order_id":42}"#.to_vec())
                .with_source("order", "42"),
            NewEvent::new("blob.stored", binary.clone())
                .with_content_type("application/octet-stream"),
            NewEvent::new("text.with.nul", "a\0b").with_source("doc", ""),
        ];
        let before = Utc::now();
        let seqs = env.db.append_events(&sent).await.unwrap();
        assert_eq!(seqs.len(), 3);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let got = read_all(&env.db).await;
        assert_eq!(got.len(), 3);
        for ((e, s), seq) in got.iter().zip(&sent).zip(&seqs) {
            assert_eq!(e.seq, *seq);
            assert_eq!(e.id, s.id);
            assert_eq!(e.event_type, s.event_type);
            assert_eq!(e.source_type, s.source_type);
            assert_eq!(e.source_id, s.source_id);
            assert_eq!(e.content_type, s.content_type);
            assert_eq!(e.payload, s.payload);
            let skew = (e.recorded_at - before).num_seconds();
            assert!((-60..60).contains(&skew), "recorded_at {}", e.recorded_at);
        }
        assert_eq!(env.db.event_head().await.unwrap(), seqs[2]);
    }
);

each_db!(
    offsets_only_move_forward,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        let db = &env.db;
        assert_eq!(db.load_offset("forwarder").await.unwrap(), 0);
        assert_eq!(db.save_offset("forwarder", 5).await.unwrap(), 5);
        assert_eq!(db.save_offset("forwarder", 3).await.unwrap(), 5);
        assert_eq!(db.save_offset("forwarder", 5).await.unwrap(), 5);
        assert_eq!(db.load_offset("forwarder").await.unwrap(), 5);
        assert_eq!(db.save_offset("forwarder", 9).await.unwrap(), 9);
        assert_eq!(db.load_offset("forwarder").await.unwrap(), 9);
        assert_eq!(db.load_offset("other").await.unwrap(), 0);
        assert_eq!(db.save_offset("other", 2).await.unwrap(), 2);
        assert_eq!(db.load_offset("forwarder").await.unwrap(), 9);
        assert!(matches!(
            db.save_offset("forwarder", -1).await,
            Err(StoreError::NegativeOffset(-1))
        ));
        assert_eq!(db.load_offset("forwarder").await.unwrap(), 9);
    }
);
