//! MariaDB's GTID event (type 162), which `mysql_common` does not decode.
//!
//! # Layout relied on
//!
//! The event's body, after the 19-byte common header (whose `server_id`
//! is the GTID's server) and before the 4-byte checksum, all integers
//! little-endian (MariaDB's `Gtid_log_event`, `sql/log_event.cc`):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | sequence number |
//! | 8 | 4 | domain id |
//! | 12 | 1 | `flags2` |
//! | 13 | 8 | commit id, when `flags2 & FL_GROUP_COMMIT_ID`; else 6 zero bytes |
//! | … | … | XA's XID when `flags2 & (FL_PREPARED_XA \| FL_COMPLETED_XA)`, then extra flags (10.5+) |
//!
//! Only the first 13 bytes are read; what follows is skipped, so newer
//! servers' additions do not matter. `flags2`:
//! `FL_STANDALONE` (1: a single statement, DDL, with no BEGIN/COMMIT:
//! the group ends after its one event), `FL_GROUP_COMMIT_ID` (2),
//! `FL_TRANSACTIONAL` (4), `FL_ALLOW_PARALLEL` (8), `FL_WAITED` (16),
//! `FL_DDL` (32), `FL_PREPARED_XA` (64: the group is an `XA PREPARE`d
//! transaction, which may still roll back), `FL_COMPLETED_XA` (128: `XA
//! COMMIT`/`XA ROLLBACK` of one).

use std::fmt;

/// The group is one statement without BEGIN/COMMIT (DDL).
pub const FL_STANDALONE: u8 = 1;
/// The group is an `XA PREPARE`d transaction: not committed yet.
pub const FL_PREPARED_XA: u8 = 64;
/// The group completes an XA transaction (`XA COMMIT` or `XA ROLLBACK`).
pub const FL_COMPLETED_XA: u8 = 128;

/// A MariaDB GTID, with the flags of the event group it begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gtid {
    /// Replication domain.
    pub domain: u32,
    /// Server that wrote the group first (the event header's `server_id`).
    pub server: u32,
    /// Sequence number within the domain.
    pub seq: u64,
    /// The event's `flags2`.
    pub flags: u8,
}

/// Why a GTID event was not understood.
#[derive(Debug, thiserror::Error)]
#[error("gtid event body of {0} bytes is shorter than 13")]
pub struct ShortGtidEvent(pub usize);

impl Gtid {
    /// Parses the body of a GTID event (header and checksum removed)
    /// written by `server_id`.
    pub fn parse(body: &[u8], server_id: u32) -> Result<Self, ShortGtidEvent> {
        let (Some(seq), Some(domain), Some(&flags)) =
            (body.get(0..8), body.get(8..12), body.get(12))
        else {
            return Err(ShortGtidEvent(body.len()));
        };
        let mut s = [0u8; 8];
        s.copy_from_slice(seq);
        let mut d = [0u8; 4];
        d.copy_from_slice(domain);
        Ok(Self {
            domain: u32::from_le_bytes(d),
            server: server_id,
            seq: u64::from_le_bytes(s),
            flags,
        })
    }

    /// Whether the group is a single statement without BEGIN/COMMIT.
    pub fn standalone(&self) -> bool {
        self.flags & FL_STANDALONE != 0
    }

    /// Whether the group is an `XA PREPARE`d transaction.
    pub fn prepared_xa(&self) -> bool {
        self.flags & FL_PREPARED_XA != 0
    }
}

/// `domain-server-sequence`, as MariaDB writes a GTID.
impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sequence_domain_and_flags() {
        let mut body = Vec::new();
        body.extend_from_slice(&42u64.to_le_bytes());
        body.extend_from_slice(&3u32.to_le_bytes());
        body.push(FL_STANDALONE | 8);
        body.extend_from_slice(&[0; 6]);
        let g = Gtid::parse(&body, 7).unwrap();
        assert_eq!(g.to_string(), "3-7-42");
        assert!(g.standalone());
        assert!(!g.prepared_xa());
    }

    #[test]
    fn a_short_body_is_an_error_not_a_panic() {
        assert!(Gtid::parse(&[1, 2, 3], 1).is_err());
        assert!(Gtid::parse(&[], 1).is_err());
    }
}

/// Property tests (issue 13): any bytes are a GTID or a short-event error,
/// never a panic, and a body built from a GTID (with whatever a newer
/// server appends) reads back as that GTID.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// The body of a GTID event as MariaDB lays it out (see the module
    /// docs), followed by `rest`.
    fn encode(gtid: &Gtid, rest: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(13 + rest.len());
        body.extend_from_slice(&gtid.seq.to_le_bytes());
        body.extend_from_slice(&gtid.domain.to_le_bytes());
        body.push(gtid.flags);
        body.extend_from_slice(rest);
        body
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_bytes_are_a_gtid_or_an_error(body in proptest::collection::vec(any::<u8>(), 0..40), server in any::<u32>()) {
            match Gtid::parse(&body, server) {
                Ok(gtid) => {
                    prop_assert!(body.len() >= 13);
                    prop_assert_eq!(gtid.server, server);
                }
                Err(ShortGtidEvent(n)) => {
                    prop_assert!(body.len() < 13);
                    prop_assert_eq!(n, body.len());
                }
            }
        }

        #[test]
        fn a_gtid_reads_back_from_its_body(
            domain in any::<u32>(),
            server in any::<u32>(),
            seq in any::<u64>(),
            flags in any::<u8>(),
            rest in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let gtid = Gtid { domain, server, seq, flags };
            let back = Gtid::parse(&encode(&gtid, &rest), server).unwrap();
            prop_assert_eq!(back, gtid);
            prop_assert_eq!(back.to_string(), format!("{domain}-{server}-{seq}"));
            prop_assert_eq!(back.standalone(), flags & FL_STANDALONE != 0);
            prop_assert_eq!(back.prepared_xa(), flags & FL_PREPARED_XA != 0);
        }
    }
}
