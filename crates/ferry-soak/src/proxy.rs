//! A TCP proxy on the loopback interface, one per link (client side →
//! server), whose mode the fault schedule switches: pass, delay every chunk
//! by N ms, blackhole (nothing flows either way and new connections are
//! held unanswered, as when a route is lost; bytes are held, never dropped,
//! so the stream stays intact if the route comes back), or reset every open
//! connection at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

/// What a link does to its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow.
    Pass,
    /// Each chunk waits this long before it is forwarded.
    Delay(Duration),
    /// Nothing flows; new connections wait.
    Blackhole,
}

/// One proxied link.
pub struct Link {
    /// Its name in the log and the summary.
    pub name: &'static str,
    /// Where clients connect.
    pub listen: SocketAddr,
    mode: watch::Sender<Mode>,
    reset: broadcast::Sender<()>,
}

impl Link {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(name: &'static str, upstream: SocketAddr) -> anyhow::Result<Arc<Self>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(name, listener, upstream)
    }

    /// Forwards connections accepted on `listener` to `upstream`.
    pub fn serve(
        name: &'static str,
        listener: TcpListener,
        upstream: SocketAddr,
    ) -> anyhow::Result<Arc<Self>> {
        let listen = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Pass);
        let (reset, _) = broadcast::channel(4);
        let link = Arc::new(Self {
            name,
            listen,
            mode,
            reset,
        });
        let accepting = link.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                tokio::spawn(accepting.clone().carry(client, upstream));
            }
        });
        Ok(link)
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    /// Switches the mode for open and new connections.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Closes every open connection with a TCP reset.
    pub fn reset_all(&self) {
        let _ = self.reset.send(());
    }

    async fn carry(self: Arc<Self>, client: TcpStream, upstream: SocketAddr) {
        let mut reset = self.reset.subscribe();
        let mut mode = self.mode.subscribe();
        // A blackholed route: the client's SYN is answered by nobody.
        if wait_open(&mut mode).await.is_err() {
            return;
        }
        let server = tokio::select! {
            s = TcpStream::connect(upstream) => match s { Ok(s) => s, Err(_) => return },
            _ = reset.recv() => { abort(&client); return }
        };
        let _ = server.set_nodelay(true);
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let up = pump(cr, sw, self.mode.subscribe());
        let down = pump(sr, cw, self.mode.subscribe());
        tokio::select! {
            (a, b) = async { tokio::join!(up, down) } => {
                // Both directions ended by themselves.
                drop((a, b));
            }
            _ = reset.recv() => {}
        }
        // Dropping the halves here closes both sockets; with SO_LINGER 0
        // set below they go with a reset rather than a FIN.
    }
}

/// Waits until the mode lets traffic through.
async fn wait_open(mode: &mut watch::Receiver<Mode>) -> Result<(), ()> {
    loop {
        if *mode.borrow_and_update() != Mode::Blackhole {
            return Ok(());
        }
        mode.changed().await.map_err(|_| ())?;
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) -> std::io::Result<()> {
    // Zero linger: closing sends a reset; it never blocks (nothing to flush).
    #[allow(deprecated)]
    let _ = to.as_ref().set_linger(Some(Duration::ZERO));
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if wait_open(&mut mode).await.is_err() {
            return Ok(());
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        // Held while blackholed; delayed in delay mode.
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Pass => break,
                Mode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Blackhole => {
                    if mode.changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        to.write_all(&buf[..n]).await?;
    }
}

fn abort(stream: &TcpStream) {
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn passes_holds_and_resets() {
        let link = Link::start("echo", echo_server().await).await.unwrap();
        let mut c = TcpStream::connect(link.listen).await.unwrap();
        c.write_all(b"one").await.unwrap();
        let mut buf = [0u8; 3];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"one");

        link.set(Mode::Blackhole);
        c.write_all(b"two").await.unwrap();
        let held = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut buf)).await;
        assert!(held.is_err(), "a blackholed link let bytes through");
        link.set(Mode::Pass);
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(
            &buf, b"two",
            "bytes held by the blackhole are delivered after it"
        );

        link.reset_all();
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .expect("a reset connection ends");
        assert!(end.is_err() || rest.is_empty());
    }
}
