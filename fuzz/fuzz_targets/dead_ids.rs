//! The admin API's dead-item ids and page cursors (ferry-store's
//! `DeadId` and `DeadCursor`, `FromStr`). Round trip: what parses is
//! written back by `Display` and parses again to the same value.
#![no_main]

use ferry_store::admin::{DeadCursor, DeadId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(id) = s.parse::<DeadId>() {
        let written = id.to_string();
        let again: DeadId = written
            .parse()
            .unwrap_or_else(|e| panic!("{s:?} -> {written:?}: {e}"));
        assert_eq!(again, id, "{s:?} -> {written:?}");
        let _ = id.kind();
    }
    if let Ok(cursor) = s.parse::<DeadCursor>() {
        let written = cursor.to_string();
        let again: DeadCursor = written
            .parse()
            .unwrap_or_else(|e| panic!("{s:?} -> {written:?}: {e}"));
        assert_eq!(again, cursor, "{s:?} -> {written:?}");
    }
});
