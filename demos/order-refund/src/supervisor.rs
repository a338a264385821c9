//! Runs the shop as a child process, so that it can be killed for real.
//!
//! The child is this demo's own binary with the hidden subcommand `shop`
//! ([`ShopArgs`]). It prints [`READY`](crate::shop::READY) and its address
//! once it serves; it shuts down gracefully when its stdin closes, and it
//! is killed with SIGKILL to simulate a crash (no shutdown code runs, just
//! as when a machine loses power or the kernel's OOM killer strikes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use ferry_core::RetryPolicy;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::shop::{RefundOptions, ShopOptions, READY};

/// The arguments of the hidden `shop` subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct ShopArgs {
    /// The SQLite database, `sqlite://path`, migrated and seeded.
    #[arg(long)]
    pub database: String,
    /// Where to serve the cancel endpoint and the events API.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Refund through this endpoint (runs the forwarder); without it the
    /// shop only serves.
    #[arg(long)]
    pub payment_url: Option<String>,
    /// Events per forwarder page (the offset is saved after each).
    #[arg(long, default_value_t = 20)]
    pub batch_size: u32,
    /// Attempts at one refund before the forwarder stops.
    #[arg(long, default_value_t = 50)]
    pub retry_attempts: u32,
    /// Wait after a failed refund call, doubling up to --retry-max.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub retry_initial: Duration,
    /// Longest wait between two refund calls for one event.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,
    /// Time limit of one refund call.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,
}

impl ShopArgs {
    /// The arguments for `options`, refunding through `payment_url` or not.
    pub fn new(options: &ShopOptions) -> Self {
        let refunds = options.refunds.as_ref();
        let retry = refunds.map(|r| r.retry.clone()).unwrap_or_default();
        Self {
            database: options.database.clone(),
            listen: options.listen,
            payment_url: refunds.map(|r| r.payment_url.clone()),
            batch_size: refunds.map_or(20, |r| r.batch_size),
            retry_attempts: retry.max_attempts,
            retry_initial: retry.initial_backoff,
            retry_max: retry.max_backoff,
            call_timeout: refunds.map_or(Duration::from_secs(2), |r| r.call_timeout),
        }
    }

    /// The shop's options.
    pub fn options(&self) -> ShopOptions {
        ShopOptions {
            database: self.database.clone(),
            listen: self.listen,
            refunds: self.payment_url.as_ref().map(|url| RefundOptions {
                payment_url: url.clone(),
                batch_size: self.batch_size,
                retry: RetryPolicy {
                    max_attempts: self.retry_attempts,
                    initial_backoff: self.retry_initial,
                    max_backoff: self.retry_max,
                    multiplier: 2.0,
                    jitter: 0.2,
                },
                call_timeout: self.call_timeout,
            }),
        }
    }

    /// The command line, after the subcommand's name.
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--database".to_owned(),
            self.database.clone(),
            "--listen".to_owned(),
            self.listen.to_string(),
        ];
        if let Some(url) = &self.payment_url {
            let d = |d: Duration| format!("{}ms", d.as_millis());
            args.extend([
                "--payment-url".to_owned(),
                url.clone(),
                "--batch-size".to_owned(),
                self.batch_size.to_string(),
                "--retry-attempts".to_owned(),
                self.retry_attempts.to_string(),
                "--retry-initial".to_owned(),
                d(self.retry_initial),
                "--retry-max".to_owned(),
                d(self.retry_max),
                "--call-timeout".to_owned(),
                d(self.call_timeout),
            ]);
        }
        args
    }
}

/// A shop process to start.
#[derive(Clone, Debug)]
pub struct ShopCommand {
    /// This demo's binary.
    pub program: PathBuf,
    /// The shop's options.
    pub options: ShopOptions,
}

impl ShopCommand {
    /// Starts the shop, refunding or not, and waits until it serves.
    pub async fn start(&self, refunds: bool) -> anyhow::Result<ShopProcess> {
        let mut options = self.options.clone();
        if !refunds {
            options.refunds = None;
        }
        let mut child = Command::new(&self.program)
            .arg("shop")
            .args(ShopArgs::new(&options).to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Should the demo itself die, the shop goes with it.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout from the shop")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix(READY) {
                    return Ok::<_, anyhow::Error>(Some(addr.trim().parse::<SocketAddr>()?));
                }
            }
            Ok(None)
        })
        .await;
        let addr = match ready {
            Ok(Ok(Some(addr))) => addr,
            Ok(Ok(None)) => {
                let status = child.wait().await?;
                anyhow::bail!("the shop exited before it was ready ({status})")
            }
            Ok(Err(e)) => return Err(e.context("cannot read the shop's output")),
            Err(_) => anyhow::bail!("the shop was not ready within 30 s"),
        };
        // Keep reading, so that the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ShopProcess { child, stdin, addr })
    }
}

/// A running shop process.
#[derive(Debug)]
pub struct ShopProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

impl ShopProcess {
    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills it with SIGKILL: no shutdown code runs. Returns once it is gone.
    pub async fn kill(mut self) -> anyhow::Result<ExitStatus> {
        self.child.start_kill().context("cannot kill the shop")?;
        Ok(self.child.wait().await?)
    }

    /// Asks it to shut down (closes its stdin) and waits up to `grace`;
    /// kills it after that.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        drop(self.stdin.take());
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.start_kill()?;
                let status = self.child.wait().await?;
                anyhow::bail!("the shop did not stop within {grace:?}; killed ({status})")
            }
        }
    }

    /// Its exit status if it has exited on its own.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        shop: ShopArgs,
    }

    fn parsed(options: &ShopOptions) -> ShopOptions {
        let args = ShopArgs::new(options).to_args();
        Wrapper::try_parse_from(std::iter::once("shop".to_owned()).chain(args))
            .expect("the shop parses what the demo passes")
            .shop
            .options()
    }

    #[test]
    fn the_shop_gets_the_options_the_demo_meant() {
        let refunding = ShopOptions {
            database: "sqlite:///tmp/x.db".to_owned(),
            listen: "127.0.0.1:4321".parse().unwrap(),
            refunds: Some(RefundOptions {
                payment_url: "http://127.0.0.1:9/refunds".to_owned(),
                batch_size: 7,
                retry: RetryPolicy {
                    max_attempts: 9,
                    initial_backoff: Duration::from_millis(15),
                    max_backoff: Duration::from_millis(900),
                    multiplier: 2.0,
                    jitter: 0.2,
                },
                call_timeout: Duration::from_millis(1500),
            }),
        };
        assert_eq!(
            format!("{:?}", parsed(&refunding)),
            format!("{refunding:?}")
        );
        let serving = ShopOptions {
            refunds: None,
            ..refunding
        };
        assert_eq!(format!("{:?}", parsed(&serving)), format!("{serving:?}"));
    }
}
