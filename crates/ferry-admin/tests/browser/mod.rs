//! A real browser for tests: Debian's headless Chromium driven over
//! WebDriver by chromedriver, which the test starts on a free port.
//!
//! `FERRY_CHROMEDRIVER` and `FERRY_CHROMIUM` override where they are
//! (default: `chromedriver` on the PATH and `/usr/bin/chromium`).
//! `scripts/services.sh` installs both. With `FERRY_SCREENSHOTS=DIR` set,
//! [`Browser::screenshot`] writes whole-page PNGs to DIR (relative to the
//! workspace root).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// How long a wait for the page lasts before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A browser session and its chromedriver; both end on drop.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    base: String,
    _driver: Child,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium whose relative URLs
    /// resolve against `base` (e.g. `http://127.0.0.1:4321`).
    pub async fn start(base: &str) -> Browser {
        let driver_bin =
            std::env::var("FERRY_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".to_owned());
        let chromium =
            std::env::var("FERRY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {driver_bin} (install chromium-driver: scripts/services.sh): {e}")
            });
        let webdriver = format!("http://127.0.0.1:{port}");
        let mut caps = Capabilities::new();
        caps.insert("browserName".to_owned(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    "--force-device-scale-factor=1", "--lang=en-US",
                ],
            }),
        );
        let start = Instant::now();
        let client = loop {
            let mut builder =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            builder.capabilities(caps.clone());
            match builder.connect(&webdriver).await {
                Ok(client) => break client,
                Err(e) if start.elapsed() < PATIENCE => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session from {driver_bin} on port {port}: {e}"),
            }
        };
        Browser {
            client,
            base: base.to_owned(),
            _driver: driver,
        }
    }

    /// Opens `path` (relative to the base URL).
    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The path (and query) of the page shown.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The element `css` selects, once it is there.
    pub async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let page = self.path().await;
                let text = self.client.source().await.unwrap_or_default();
                panic!("no `{css}` on {page}: {e}\n{text}")
            }
        }
    }

    /// Every element `css` selects now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    /// Whether anything matches `css` now.
    pub async fn has(&self, css: &str) -> bool {
        !self.all(css).await.is_empty()
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// The text of the element `css` selects.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// Types `value` into the field `css` selects.
    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    pub async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(e) = self.all(css).await.into_iter().next() {
                if let Ok(text) = e.text().await {
                    if ok(&text) {
                        return text;
                    }
                    assert!(
                        start.elapsed() < PATIENCE,
                        "`{css}` never became {what}; it is `{text}`"
                    );
                }
            }
            assert!(start.elapsed() < PATIENCE, "`{css}` never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page's text contains `needle`.
    pub async fn wait_page_text(&self, needle: &str) {
        self.wait_text("body", &format!("a page holding `{needle}`"), |t| {
            t.contains(needle)
        })
        .await;
    }

    /// Runs `script` in the page (a returned promise is awaited).
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap()
    }

    /// Writes the whole page to `FERRY_SCREENSHOTS/NAME.png` when that is set.
    pub async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("FERRY_SCREENSHOTS") else {
            return;
        };
        let dir = {
            let d = PathBuf::from(dir);
            if d.is_absolute() {
                d
            } else {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../..")
                    .join(d)
            }
        };
        std::fs::create_dir_all(&dir).unwrap();
        // The window's own bars take some of its height: add them.
        let height = self
            .run(
                "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight",
                vec![],
            )
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(500, 2600) as u32;
        self.client.set_window_size(1280, height).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let png = self.client.screenshot().await.unwrap();
        self.client.set_window_size(1280, 900).await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the session.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
