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

#[test]
fn relay_refuses_an_unmigrated_database_unless_asked() {
    let t = SqliteTestDb::create();
    let out = ferry(&["relay", "--database", &t.url, "--to", "null://"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("ferry migrate"), "{}", text(&out));
}

/// The plain-SQL producer statement from docs/outbox.md, through the
/// `sqlite3` and `psql` command-line clients, then dead letters handled
/// with the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_produce_by_sql_and_manage_dead_letters() {
    let sql = r#"INSERT INTO ferry_outbox (topic, message_key, payload) VALUES ('user.signed_up', 'user-42', '{"user_id":42}');
INSERT INTO ferry_outbox (topic, message_key, payload) VALUES ('user.signed_up', 'user-43', '{"poison":true}');"#;
    let s = SqliteTestDb::create();
    let pg = PgTestDb::create().await;
    for url in [s.url.clone(), pg.url.clone()] {
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
        sigterm(&relay);
        assert!(relay.wait().unwrap().success());
    }
}
