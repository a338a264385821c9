//! `order-refund-demo`: runs the order-cancel → refund demo and prints its
//! report. Exits with 0 only when every check passed.
//!
//! `order-refund-demo shop …` (hidden) is the shop's process, which the
//! demo starts, kills and restarts.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use order_refund_demo::{Options, PaymentBehaviour, ShopArgs};
use tokio::io::AsyncReadExt;

/// A shop cancels orders at once and refunds them after commit through
/// Ferry's event store, while its process is killed and restarted; an
/// external consumer follows the events over HTTP. The report shows what a
/// synchronous refund call would have cost, and checks that every
/// cancelled order was refunded exactly once.
#[derive(Parser, Debug)]
#[command(
    name = "order-refund-demo",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Orders in the shop.
    #[arg(long, default_value_t = 150)]
    orders: usize,
    /// Open orders to cancel.
    #[arg(long, default_value_t = 100)]
    cancels: usize,
    /// Of those, how many are cancelled before the first crash.
    #[arg(long, default_value_t = 40)]
    cancels_before_crash: usize,
    /// Shipped orders (the customers try to cancel them too; refused).
    #[arg(long, default_value_t = 10)]
    shipped: usize,
    /// Crashes at random moments while refunds are under way (after the
    /// first one, which comes before any refund).
    #[arg(long, default_value_t = 2)]
    crashes: usize,
    /// SQLite database, `sqlite://path` (must hold no orders yet); a
    /// temporary file by default.
    #[arg(long)]
    database: Option<String>,
    /// Share of refund calls that fail without refunding (half 503, half 500).
    #[arg(long, default_value_t = 0.30)]
    fail_rate: f64,
    /// Share of refund calls that refund, then answer 500.
    #[arg(long, default_value_t = 0.10)]
    lost_rate: f64,
    /// Seed of the orders, the crash moments and the payment service's
    /// latencies and failures; random by default.
    #[arg(long)]
    seed: Option<u64>,
    /// How long the whole run may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The shop's process (started by the demo).
    #[command(hide = true)]
    Shop(ShopArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Retries are the point of the demo: logged at debug, not as warnings.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    if let Some(Command::Shop(args)) = cli.command {
        return match order_refund_demo::shop::run(args.options(), stdin_closed()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shop: error: {e:#}");
                ExitCode::from(2)
            }
        };
    }

    let shop_program = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("error: cannot find this program's path to start the shop: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = cli.seed.unwrap_or_else(rand::random);
    let options = Options {
        shop_program,
        database: cli.database,
        orders: cli.orders,
        cancels: cli.cancels,
        cancels_before_crash: cli.cancels_before_crash,
        shipped: cli.shipped,
        crashes: cli.crashes,
        seed,
        payment: PaymentBehaviour {
            fail_rate: cli.fail_rate,
            lost_rate: cli.lost_rate,
            seed,
            ..PaymentBehaviour::default()
        },
        timeout: cli.timeout,
        ..Options::default()
    };
    match order_refund_demo::run(options).await {
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

/// Completes when stdin reaches its end: the demo closed it to stop the
/// shop, or the demo is gone.
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}
