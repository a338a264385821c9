//! The customers: cancel requests over HTTP, each timed, sent again when a
//! crash of the shop cut them off.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::shop::{CancelResponse, ALREADY_CANCELLED, CANCELLED};

/// What the cancel requests came to.
#[derive(Clone, Debug, Default)]
pub struct CancelLog {
    /// Time of each answered request, from sending to the full response
    /// (the last attempt of a request sent more than once).
    pub latencies: Vec<Duration>,
    /// Orders this load cancelled (answered `cancelled`).
    pub cancelled: Vec<i64>,
    /// Orders answered `already_cancelled`: a request whose first answer
    /// was lost in a crash, after the shop had committed it.
    pub already_cancelled: Vec<i64>,
    /// Orders the shop refused to cancel (409: shipped).
    pub refused: Vec<i64>,
    /// Attempts cut off (no answer: the shop was killed or restarting) and
    /// sent again.
    pub cut_off: u64,
    /// Requests that ended otherwise (another status, or no answer before
    /// the deadline), with the first such error; 0 in a healthy run.
    pub failed: Vec<i64>,
    /// The first failure, for the report.
    pub first_error: Option<String>,
}

impl CancelLog {
    /// Adds `other`'s entries to this log.
    pub fn extend(&mut self, other: CancelLog) {
        self.latencies.extend(other.latencies);
        self.cancelled.extend(other.cancelled);
        self.already_cancelled.extend(other.already_cancelled);
        self.refused.extend(other.refused);
        self.cut_off += other.cut_off;
        self.failed.extend(other.failed);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Requests answered.
    pub fn answered(&self) -> usize {
        self.cancelled.len() + self.already_cancelled.len() + self.refused.len()
    }
}

enum Answer {
    Cancelled,
    AlreadyCancelled,
    Refused,
}

/// How the requests go out.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Requests in flight at once, at most.
    pub concurrency: usize,
    /// Time between the starts of two requests; none sends as fast as
    /// `concurrency` allows.
    pub interval: Option<Duration>,
    /// No new attempt after this.
    pub deadline: Instant,
}

/// Cancels `orders` through the shop at `addr`. A request that gets no
/// answer (connection refused or reset: the shop is down) is sent again
/// until the deadline; the shop makes a repeat harmless.
pub async fn cancel(addr: SocketAddr, orders: Vec<i64>, pace: Pace) -> anyhow::Result<CancelLog> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let start = Instant::now();
    let results: Vec<RequestResult> = futures::stream::iter(orders.into_iter().enumerate())
        .map(|(i, order_id)| {
            let client = &client;
            async move {
                if let Some(interval) = pace.interval {
                    tokio::time::sleep_until(start + interval * i as u32).await;
                }
                let url = format!("http://{addr}/orders/{order_id}/cancel");
                let mut cut_off = 0;
                loop {
                    match attempt(client, &url).await {
                        Attempt::Answered(result) => return (order_id, result, cut_off),
                        Attempt::CutOff(e) => {
                            cut_off += 1;
                            if Instant::now() >= pace.deadline {
                                return (order_id, Err(format!("no answer: {e}")), cut_off);
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        })
        .buffer_unordered(pace.concurrency.max(1))
        .collect()
        .await;
    let mut log = CancelLog::default();
    for (order_id, result, cut_off) in results {
        log.cut_off += cut_off;
        match result {
            Ok((latency, answer)) => {
                log.latencies.push(latency);
                match answer {
                    Answer::Cancelled => log.cancelled.push(order_id),
                    Answer::AlreadyCancelled => log.already_cancelled.push(order_id),
                    Answer::Refused => log.refused.push(order_id),
                }
            }
            Err(e) => {
                log.failed.push(order_id);
                log.first_error
                    .get_or_insert_with(|| format!("order {order_id}: {e}"));
            }
        }
    }
    Ok(log)
}

/// An order, how its request ended, and how many attempts were cut off.
type RequestResult = (i64, Result<(Duration, Answer), String>, u64);

enum Attempt {
    Answered(Result<(Duration, Answer), String>),
    CutOff(String),
}

async fn attempt(client: &reqwest::Client, url: &str) -> Attempt {
    let started = std::time::Instant::now();
    let response = match client.post(url).send().await {
        Ok(response) => response,
        Err(e) => return Attempt::CutOff(e.to_string()),
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return Attempt::CutOff(e.to_string()),
    };
    let elapsed = started.elapsed();
    let answer = match status {
        reqwest::StatusCode::OK => match serde_json::from_slice::<CancelResponse>(&body) {
            Ok(r) if r.outcome == CANCELLED => Ok((elapsed, Answer::Cancelled)),
            Ok(r) if r.outcome == ALREADY_CANCELLED => Ok((elapsed, Answer::AlreadyCancelled)),
            _ => Err(format!(
                "unexpected answer: {}",
                String::from_utf8_lossy(&body)
            )),
        },
        reqwest::StatusCode::CONFLICT => Ok((elapsed, Answer::Refused)),
        other => Err(format!(
            "answered {other}: {}",
            String::from_utf8_lossy(&body)
        )),
    };
    Attempt::Answered(answer)
}
