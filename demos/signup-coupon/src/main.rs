//! `signup-coupon-demo`: runs the signup/coupon demo and prints its report.
//! Exits with 0 only when every user got exactly one coupon.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use signup_coupon_demo::{CouponBehaviour, Options};

/// Signups hand coupons to a slow, flaky coupon service through Ferry's
/// SQLite outbox; the report shows what a synchronous call would have cost.
#[derive(Parser, Debug)]
#[command(name = "signup-coupon-demo", version)]
struct Cli {
    /// Signups to send.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Signups in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// SQLite database, `sqlite://path` (must hold no users yet); a
    /// temporary file by default.
    #[arg(long)]
    database: Option<String>,
    /// Share of coupon calls that fail without issuing (half 503, half 500).
    #[arg(long, default_value_t = 0.30)]
    fail_rate: f64,
    /// Share of coupon calls that issue the coupon, then answer 500.
    #[arg(long, default_value_t = 0.10)]
    lost_rate: f64,
    /// Seed of the coupon service's latencies and failures; random by default.
    #[arg(long)]
    seed: Option<u64>,
    /// How long to wait for the backlog to drain after the last signup.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let defaults = Options::default();
    let options = Options {
        database: cli.database,
        users: cli.users,
        concurrency: cli.concurrency,
        coupon: CouponBehaviour {
            fail_rate: cli.fail_rate,
            lost_rate: cli.lost_rate,
            seed: cli.seed.unwrap_or(defaults.coupon.seed),
            ..defaults.coupon.clone()
        },
        timeout: cli.timeout,
        ..defaults
    };
    match signup_coupon_demo::run(options).await {
        Ok(report) => {
            println!("{report}");
            if report.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
