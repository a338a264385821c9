//! Property tests of the admin API's dead-item ids and page cursors
//! (issue 13): every id and cursor reads back from its string form, and
//! any text is one or an invalid-argument error naming the parameter,
//! never a panic.

use chrono::DateTime;
use ferry_store::admin::{DeadCursor, DeadId};
use proptest::prelude::*;
use uuid::Uuid;

fn dead_id() -> impl Strategy<Value = DeadId> {
    prop_oneof![
        any::<i64>().prop_map(DeadId::outbox),
        any::<u128>().prop_map(|u| DeadId::consumer(Uuid::from_u128(u))),
        any::<u128>().prop_map(|u| DeadId::task(Uuid::from_u128(u))),
        // Reader names may hold `:` and `.`, and any other character.
        ("[a-z:.]{1,8}|\\PC{1,8}", any::<i64>()).prop_map(|(r, s)| DeadId::forwarder(r, s)),
    ]
}

/// Text shaped like ids and cursors, and any text.
fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "-?[0-9]{0,20}\\.?(outbox|consumer|forwarder|task|OUTBOX|x)?:?[0-9a-f:.+-]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_id_and_a_cursor_read_back_from_their_text(id in dead_id(), micros in any::<i64>()) {
        let text = id.to_string();
        let back: DeadId = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&back, &id);
        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(serde_json::from_str::<DeadId>(&json).unwrap(), id.clone());
        if let Some(at) = DateTime::from_timestamp_micros(micros) {
            let cursor = DeadCursor::new(at, id);
            let text = cursor.to_string();
            let back: DeadCursor = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(back, cursor);
        }
    }

    #[test]
    fn any_text_is_an_id_or_names_the_parameter(text in id_like()) {
        match text.parse::<DeadId>() {
            Ok(id) => prop_assert_eq!(id.to_string().parse::<DeadId>().unwrap(), id),
            Err(e) => prop_assert!(e.to_string().contains("dead item id"), "{}", e),
        }
        match text.parse::<DeadCursor>() {
            Ok(cursor) => prop_assert_eq!(cursor.to_string().parse::<DeadCursor>().unwrap(), cursor),
            Err(e) => prop_assert!(e.to_string().contains("cursor"), "{}", e),
        }
    }
}
