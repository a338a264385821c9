//! Redis Streams entries as the subscriber reads them (ferry-redis's
//! private entry.rs, compiled here from its source: the crate exposes no
//! decoder). The input is an XREADGROUP reply in RESP, parsed by the redis
//! client; its entries' messages decode or are `Malformed`. Round trip: a
//! message made from the same bytes (`arbitrary`) as entry fields reads
//! back as the message.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/ferry-redis/src/entry.rs"]
mod entry;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = redis::parse_redis_value(data) {
        if let Ok(entries) = entry::entries(value) {
            for e in entries {
                let _ = entry::id_millis(&e.id);
                let _ = e.message();
            }
        }
    }

    let Some((message, source)) = ferry_fuzz::arbitrary_message(data) else {
        return;
    };
    let fields = entry::fields(&message, &source)
        .into_iter()
        .map(|(name, value)| (name.into_bytes(), value))
        .collect();
    let read = entry::Entry {
        id: "1-0".to_owned(),
        fields,
    };
    let back = read
        .message()
        .unwrap_or_else(|e| panic!("{message:?} does not read back: {e}"));
    assert_eq!(back, message);
});
