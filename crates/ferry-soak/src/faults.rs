//! The fault schedule: drawn from the seed before the run (so a seed
//! replays the same faults in the same order at the same nominal times),
//! then carried out one fault at a time.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::receiver::Webhook;

/// What a proxied link is made to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    /// Every chunk delayed by this long.
    Delay(Duration),
    /// Nothing flows, new connections wait.
    Blackhole,
    /// Every open connection reset at once (no hold).
    Reset,
}

/// One fault.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// SIGKILL a `ferry` process (by index), start it again after `down`.
    KillFerry {
        /// Index into the soak's ferry processes.
        process: usize,
        /// How long it stays dead.
        down: Duration,
    },
    /// Stop the private PostgreSQL immediately (a crash), start it after `down`.
    RestartPostgres {
        /// How long it stays down.
        down: Duration,
    },
    /// SIGKILL the private NATS server, start it again.
    RestartNats {
        /// How long it stays down.
        down: Duration,
    },
    /// SIGKILL the private Redis server, start it again.
    RestartRedis {
        /// How long it stays down.
        down: Duration,
    },
    /// A proxied link misbehaves for `hold`.
    Link {
        /// Index into the soak's links.
        link: usize,
        /// What it does.
        fault: LinkFault,
        /// For how long.
        hold: Duration,
    },
    /// The webhook misbehaves for `hold`.
    Webhook {
        /// How it answers meanwhile.
        mode: Webhook,
        /// For how long.
        hold: Duration,
    },
}

impl Fault {
    /// What it does and to what, for the fault log: (`kill`, process),
    /// (`restart`, `postgres`), (`delay 120ms`, link), (`500`, `webhook`)…
    pub fn parts(&self, processes: &[String], links: &[&str]) -> (String, String) {
        match self {
            Fault::KillFerry { process, .. } => ("kill".into(), processes[*process].clone()),
            Fault::RestartPostgres { .. } => ("restart".into(), "postgres".into()),
            Fault::RestartNats { .. } => ("restart".into(), "nats".into()),
            Fault::RestartRedis { .. } => ("restart".into(), "redis".into()),
            Fault::Link { link, fault, .. } => {
                let what = match fault {
                    LinkFault::Delay(d) => format!("delay {}ms", d.as_millis()),
                    LinkFault::Blackhole => "blackhole".into(),
                    LinkFault::Reset => "reset".into(),
                };
                (what, links[*link].to_owned())
            }
            Fault::Webhook { mode, .. } => {
                let what = match mode {
                    Webhook::Up => "up".into(),
                    Webhook::Stall(d) => format!("stall {}ms", d.as_millis()),
                    Webhook::Fail(s) => s.to_string(),
                };
                (what, "webhook".into())
            }
        }
    }

    /// Its kind, for the summary: `kill <process>`, `restart postgres`,
    /// `<link> blackhole`, `webhook 500`…
    pub fn kind(&self, processes: &[String], links: &[&str]) -> String {
        match self {
            Fault::KillFerry { process, .. } => format!("kill {}", processes[*process]),
            Fault::RestartPostgres { .. } => "restart postgres".into(),
            Fault::RestartNats { .. } => "restart nats".into(),
            Fault::RestartRedis { .. } => "restart redis".into(),
            Fault::Link { link, fault, .. } => {
                let what = match fault {
                    LinkFault::Delay(_) => "delay",
                    LinkFault::Blackhole => "blackhole",
                    LinkFault::Reset => "reset",
                };
                format!("{} {what}", links[*link])
            }
            Fault::Webhook { mode, .. } => match mode {
                Webhook::Up => "webhook up".into(),
                Webhook::Stall(_) => "webhook stall".into(),
                Webhook::Fail(s) => format!("webhook {s}"),
            },
        }
    }
}

/// A fault and when it is due, from the start of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduled {
    /// Due this long after the start.
    pub at: Duration,
    /// The fault.
    pub fault: Fault,
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.gen_range(lo..=hi))
}

/// The schedule for `seed` over `duration`, with `processes` ferry
/// processes and `links` proxied links; `stall` is how long a stalled
/// webhook waits (longer than the relay's HTTP timeout).
pub fn schedule(
    seed: u64,
    duration: Duration,
    processes: usize,
    links: usize,
    stall: Duration,
) -> Vec<Scheduled> {
    // A stream of its own, so the schedule does not depend on anything else
    // drawn from the seed.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let mut out = Vec::new();
    let mut at = ms(&mut rng, 2_000, 4_000);
    while at < duration {
        let roll = rng.gen_range(0..100);
        let fault = match roll {
            0..=29 => Fault::KillFerry {
                process: rng.gen_range(0..processes),
                down: ms(&mut rng, 100, 3_000),
            },
            30..=54 => {
                let fault = match rng.gen_range(0..3) {
                    0 => LinkFault::Delay(ms(&mut rng, 20, 300)),
                    1 => LinkFault::Blackhole,
                    _ => LinkFault::Reset,
                };
                Fault::Link {
                    link: rng.gen_range(0..links),
                    fault,
                    hold: ms(&mut rng, 500, 5_000),
                }
            }
            55..=69 => {
                let mode = match rng.gen_range(0..3) {
                    0 => Webhook::Stall(stall),
                    1 => Webhook::Fail(500),
                    _ => Webhook::Fail(503),
                };
                Fault::Webhook {
                    mode,
                    hold: ms(&mut rng, 500, 5_000),
                }
            }
            70..=79 => Fault::RestartPostgres {
                down: ms(&mut rng, 100, 2_000),
            },
            80..=89 => Fault::RestartNats {
                down: ms(&mut rng, 100, 2_000),
            },
            _ => Fault::RestartRedis {
                down: ms(&mut rng, 100, 2_000),
            },
        };
        out.push(Scheduled { at, fault });
        at += ms(&mut rng, 1_000, 4_000);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_schedule() {
        let d = Duration::from_secs(120);
        let a = schedule(7, d, 3, 3, Duration::from_secs(3));
        let b = schedule(7, d, 3, 3, Duration::from_secs(3));
        let c = schedule(8, d, 3, 3, Duration::from_secs(3));
        assert!(a.len() > 10);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|s| s.at < d));
    }
}
