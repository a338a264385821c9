//! The load generator: many signups at once over HTTP, each timed.

use std::time::{Duration, Instant};

use futures::StreamExt;

/// What the signups came to.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Time of each signup answered 201, from sending to the full response.
    pub latencies: Vec<Duration>,
    /// Signups not answered 201 (or not answered at all).
    pub failed: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
}

/// Sends `users` signups to `url`, `concurrency` at a time.
pub async fn sign_up(url: &str, users: usize, concurrency: usize) -> anyhow::Result<LoadResult> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let results: Vec<Result<Duration, String>> = futures::stream::iter(0..users)
        .map(|i| {
            let client = &client;
            async move {
                let body = serde_json::json!({ "email": format!("user{i}@example.com") });
                let started = Instant::now();
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .map_err(|e| format!("signup request failed: {e}"))?;
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let elapsed = started.elapsed();
                if status == reqwest::StatusCode::CREATED {
                    Ok(elapsed)
                } else {
                    Err(format!("signup answered {status}: {text}"))
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut out = LoadResult::default();
    for r in results {
        match r {
            Ok(latency) => out.latencies.push(latency),
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    Ok(out)
}
