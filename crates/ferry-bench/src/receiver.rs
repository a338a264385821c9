//! A webhook receiver for the `http` sink: answers `200` at once and counts
//! requests (or serves another handler: `forward-flaky`'s).
//!
//! It runs on a thread of its own with a current-thread tokio runtime, so
//! it never takes the relay's runtime workers; it still shares the
//! machine's cores with the relay and the database, which the figures
//! include.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

/// A running receiver; stop it with [`Receiver::stop`].
pub struct Receiver {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn accept(State(requests): State<Arc<AtomicU64>>, _body: axum::body::Bytes) -> StatusCode {
    // The body is read (a real receiver would), then dropped.
    requests.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

impl Receiver {
    /// Starts listening on a free port of 127.0.0.1.
    pub fn start() -> anyhow::Result<Self> {
        let requests = Arc::new(AtomicU64::new(0));
        let app = axum::Router::new()
            .route("/hook", post(accept))
            .with_state(requests.clone());
        Self::serve(app, requests)
    }

    /// Like [`start`](Self::start), with another `app` (serving `/hook`)
    /// that counts its requests into `requests`.
    pub fn serve(app: axum::Router, requests: Arc<AtomicU64>) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind receiver")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("webhook-receiver".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("webhook receiver: no runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let served = async {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        axum::serve(listener, app)
                            .with_graceful_shutdown(async {
                                let _ = stopped.await;
                            })
                            .await
                    };
                    if let Err(e) = served.await {
                        eprintln!("webhook receiver stopped: {e}");
                    }
                });
            })
            .context("start receiver thread")?;
        Ok(Self {
            addr,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The URL the sink posts to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stops it; waits up to 2 s for its thread (idle keep-alive
    /// connections may hold it a little longer; it is then left to end
    /// on its own).
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}
