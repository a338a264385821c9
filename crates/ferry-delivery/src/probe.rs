//! How hard to knock on a sink that is down.

/// Largest probe of a sink that is down: enough messages (of different
/// keys) to tell a refused message from a refusing sink, few enough to be
/// gentle.
pub const MAX_PROBE: u32 = 16;

/// Most messages to send after `failures` consecutive failures of the sink
/// (its [`Health::failures`](crate::Health::failures)): a full batch while
/// it is up, then 1, 2, 4 … [`MAX_PROBE`], never more than `batch_size`.
/// A probe holds at most one message per key.
pub fn probe_limit(failures: u32, batch_size: u32) -> u32 {
    match failures {
        0 => batch_size,
        n => 1u32
            .checked_shl(n - 1)
            .unwrap_or(u32::MAX)
            .min(MAX_PROBE)
            .min(batch_size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_double_up_to_the_cap_and_never_exceed_a_batch() {
        let limits: Vec<u32> = (1..=6).map(|n| probe_limit(n, 1000)).collect();
        assert_eq!(limits, [1, 2, 4, 8, 16, 16]);
        assert_eq!(probe_limit(40, 1000), MAX_PROBE);
        assert_eq!(
            probe_limit(0, 1000),
            1000,
            "a sink that is up gets full batches"
        );
        assert_eq!(probe_limit(0, 5), 5);
        assert_eq!(probe_limit(4, 5), 5, "capped to the batch size");
        assert_eq!(probe_limit(6, 5), 5);
    }
}
