use super::*;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn bad_config_names_key_and_line_and_exits_non_zero() {
    let dir = TempDir::new();
    let path = dir.0.join("ferry.toml");
    std::fs::write(
        &path,
        "[[pipeline]]\nname = \"p\"\ndatabase = \"sqlite://x.db\"\nbatch_sise = 10\n[pipeline.sink]\ntype = \"null\"\n",
    )
    .unwrap();
    for cmd in ["check", "run"] {
        let out = ferry(&[cmd, "--config", path.to_str().unwrap()]);
        assert!(!out.status.success());
        let t = text(&out);
        assert!(t.contains("line 4") && t.contains("batch_sise"), "{t}");
    }
    let out = ferry(&["check", "--config", "/nonexistent/ferry.toml"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("cannot read"));
}

/// `ferry run` with a valid file: two pipelines on one SQLite outbox, split
/// by topic, one to a webhook and one to `null://`. Messages written by plain
/// SQL reach the webhook (and only its topic does); SIGTERM exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_relays_every_pipeline_until_sigterm() {
    let t = SqliteTestDb::create();
    let out = ferry(&["migrate", "--database", &t.url]);
    assert!(out.status.success(), "{}", text(&out));
    let r = Receiver::start().await;
    let dir = TempDir::new();
    let path = dir.0.join("ferry.toml");
    std::fs::write(
        &path,
        format!(
            "[[pipeline]]\nname = \"hooks\"\ndatabase = \"{db}\"\ntopics = [\"user.signed_up\"]\n\
             poll_interval = \"50ms\"\n[pipeline.sink]\ntype = \"http\"\nurl = \"{hook}\"\n\
             [[pipeline]]\nname = \"audit\"\ndatabase = \"{db}\"\ntopics = [\"audit\"]\n\
             poll_interval = \"50ms\"\n[pipeline.sink]\ntype = \"null\"\n",
            db = t.url,
            hook = r.url()
        ),
    )
    .unwrap();
    let mut child = Reaped(spawn_ferry(&["run", "--config", path.to_str().unwrap()]));

    let sql = "INSERT INTO ferry_outbox (topic, message_key, payload) VALUES \
               ('user.signed_up', 'user-1', '{\"user_id\":1}'), ('audit', NULL, '{\"a\":1}'), \
               ('user.signed_up', 'user-2', '{\"user_id\":2}'), ('audit', NULL, '{\"a\":2}');";
    let st = Command::new("sqlite3")
        .arg(&t.path)
        .arg(sql)
        .status()
        .unwrap();
    assert!(st.success());
    let db = Database::connect(&t.url).await.unwrap();
    let start = Instant::now();
    loop {
        let pending = db.outbox_stats().await.unwrap().pending;
        if pending == 0 && r.applied().len() == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still {pending} pending, {} received",
            r.applied().len()
        );
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "ferry run exited early"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut bodies: Vec<String> = r
        .applied()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["{\"user_id\":1}", "{\"user_id\":2}"]);
    stop(&mut child.0);
}

/// A pipeline that may not migrate an unmigrated database stops `ferry
/// run`, with the reason.
#[test]
fn run_exits_non_zero_when_a_pipeline_cannot_start() {
    let t = SqliteTestDb::create();
    let dir = TempDir::new();
    let path = dir.0.join("ferry.toml");
    std::fs::write(
        &path,
        format!(
            "[[pipeline]]\nname = \"p\"\ndatabase = \"{}\"\nmigrate = false\n[pipeline.sink]\ntype = \"null\"\n",
            t.url
        ),
    )
    .unwrap();
    let out = ferry(&["run", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("ferry migrate"), "{}", text(&out));
}

#[test]
fn bad_urls_are_clear_errors() {
    let out = ferry(&["relay", "--database", "sqlite://x.db", "--to", "ftp://x"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--to") && text(&out).contains("ftp"),
        "{}",
        text(&out)
    );
    let out = ferry(&["migrate", "--database", "oracle://x"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("expected postgres://"),
        "{}",
        text(&out)
    );
}

/// Flags are refused as the file refuses the same values.
#[test]
fn relay_flags_refuse_what_the_file_refuses() {
    for (flag, value, says) in [
        ("--concurrency", "0", "--concurrency"),
        ("--batch-size", "0", "--batch-size"),
        ("--order", "random", "ordered, unordered"),
    ] {
        let out = ferry(&[
            "relay",
            "--database",
            "sqlite://x.db",
            "--to",
            "null://",
            flag,
            value,
        ]);
        assert!(!out.status.success(), "{flag} {value}");
        assert!(text(&out).contains(says), "{}", text(&out));
    }
}

#[test]
fn relay_refuses_an_unmigrated_database_unless_asked() {
    let t = SqliteTestDb::create();
    let out = ferry(&["relay", "--database", &t.url, "--to", "null://"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("ferry migrate"), "{}", text(&out));
}

/// The plain-SQL producer statement from docs/outbox.md, through the
/// `sqlite3`, `psql` and `mariadb` command-line clients, then dead letters
/// handled with the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_produce_by_sql_and_manage_dead_letters() {
    let sql = r#"INSERT INTO ferry_outbox (topic, message_key, payload) VALUES ('user.signed_up', 'user-42', '{"user_id":42}');
INSERT INTO ferry_outbox (topic, message_key, payload) VALUES ('user.signed_up', 'user-43', '{"poison":true}');"#;
    let s = SqliteTestDb::create();
    let pg = PgTestDb::create().await;
    let my = ferry_testkit::MysqlTestDb::create().await;
    for url in [s.url.clone(), pg.url.clone(), my.url.clone()] {
        let out = ferry(&["migrate", "--database", &url]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("applied"));
        assert!(text(&ferry(&["migrate", "--database", &url])).contains("up to date"));
        let st = if url.starts_with("sqlite") {
            Command::new("sqlite3")
                .arg(&s.path)
                .arg(sql)
                .status()
                .unwrap()
        } else if let Some(rest) = url.strip_prefix("mysql://") {
            // mysql://user@host:port/db
            let (authority, db) = rest.split_once('/').unwrap();
            let (user, host_port) = authority.split_once('@').unwrap();
            let (host, port) = host_port.split_once(':').unwrap_or((host_port, "3306"));
            Command::new("mariadb")
                .args(["-h", host, "-P", port, "-u", user, db, "-e", sql])
                .status()
                .unwrap()
        } else {
            Command::new("psql")
                .args([url.as_str(), "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .status()
                .unwrap()
        };
        assert!(st.success());
        let r = Receiver::start().await;
        let mut relay = spawn_relay(&url, &r.url(), &[]);
        let db = Database::connect(&url).await.unwrap();
        let mut dead = 0;
        for _ in 0..200 {
            dead = db.outbox_stats().await.unwrap().dead;
            if dead == 1 && r.applied().len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!((dead, r.applied().len()), (1, 1));
        assert!(String::from_utf8_lossy(&r.applied()[0].body).contains("42"));
        let list = text(&ferry(&["dead", "list", "--database", &url]));
        assert!(
            list.contains("user.signed_up") && list.contains("400"),
            "{list}"
        );
        let json = text(&ferry(&["dead", "list", "--json", "--database", &url]));
        let row: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        let seq = row["seq"].as_i64().unwrap().to_string();
        let id = row["message_id"].as_str().unwrap().to_owned();
        // replay by sequence number: it is tried again and dies again
        assert!(text(&ferry(&["dead", "replay", &seq, "--database", &url])).contains("replayed 1"));
        wait_until("poison tried again", Duration::from_secs(20), || {
            r.requests().len() >= 3
        })
        .await;
        let mut back = 0;
        for _ in 0..100 {
            back = db.outbox_stats().await.unwrap().dead;
            if back == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(back, 1);
        // discard by id
        let out = ferry(&["dead", "discard", &id, "--database", &url]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            !ferry(&["dead", "discard", &id, "--database", &url])
                .status
                .success(),
            "already gone"
        );
        assert!(text(&ferry(&["dead", "list", "--database", &url])).contains("no dead messages"));
        assert!(text(&ferry(&["status", "--database", &url])).contains("dead 0"));
        stop(&mut relay);
    }
}
