//! MariaDB's GTID event body (`ferry_cdc::mariadb::gtid::Gtid::parse`) and
//! a binlog capture's saved checkpoint (`ferry_cdc::mariadb::Saved::parse`,
//! with the key values it holds): the input is read as both. Round trips:
//! a GTID made from the same bytes (`arbitrary`), written in the event's
//! layout, parses back to itself; a checkpoint that parses is written by
//! `checkpoint` and parses again to the same value.
#![no_main]

use arbitrary::Arbitrary;
use ferry_cdc::capture::Checkpoint;
use ferry_cdc::mariadb::gtid::Gtid;
use ferry_cdc::mariadb::Saved;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct RoundTrip<'a> {
    server: u32,
    domain: u32,
    seq: u64,
    flags: u8,
    tail: &'a [u8],
}

fuzz_target!(|data: &[u8]| {
    // The input as a GTID event's body, from server 1.
    match Gtid::parse(data, 1) {
        Ok(g) => {
            assert!(data.len() >= 13);
            assert_eq!(g.server, 1);
            let _ = (g.to_string(), g.standalone(), g.prepared_xa());
        }
        Err(e) => assert_eq!(e.0, data.len()),
    }

    // The input as a saved checkpoint.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(saved) = Saved::parse(&Checkpoint(value)) {
            let _ = saved.position();
            if let Some(snapshot) = &saved.snapshot {
                for key in snapshot.after.iter().flatten() {
                    let _ = key.to_value();
                }
            }
            let again = Saved::parse(&saved.checkpoint())
                .unwrap_or_else(|e| panic!("{saved:?} does not read back: {e}"));
            // Floats: NaN is not equal to itself; compare the written forms.
            assert_eq!(
                serde_json::to_string(&again).unwrap(),
                serde_json::to_string(&saved).unwrap()
            );
        }
    }

    // A GTID written in the event's layout, from the same bytes.
    let Ok(input) = RoundTrip::arbitrary(&mut arbitrary::Unstructured::new(data)) else {
        return;
    };
    let gtid = Gtid {
        domain: input.domain,
        server: input.server,
        seq: input.seq,
        flags: input.flags,
    };
    let mut body = Vec::new();
    body.extend_from_slice(&gtid.seq.to_le_bytes());
    body.extend_from_slice(&gtid.domain.to_le_bytes());
    body.push(gtid.flags);
    body.extend_from_slice(input.tail);
    assert_eq!(Gtid::parse(&body, gtid.server).ok(), Some(gtid));
});
