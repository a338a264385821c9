//! The conformance suite on the outbox as a broker: `OutboxSink` publishes
//! into `ferry_outbox`, `OutboxSubscriber` consumes it directly. Each case
//! gets a database of its own; the "broker restart" closes the pool and opens
//! a new one (the messages live in the database, not in the process).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_conformance::Broker;
use ferry_core::{Capabilities, Sink, Subscriber};
use ferry_store::{Database, OutboxSink, OutboxSubscriber};

/// The subscribers' visibility timeout.
const VISIBILITY: Duration = Duration::from_secs(5);

/// The outbox of one test database.
struct OutboxBroker<G> {
    url: String,
    database: Mutex<Database>,
    _guard: G,
}

impl<G: Send + Sync + 'static> OutboxBroker<G> {
    async fn open(url: String, guard: G) -> Self {
        let database = Database::connect(&url).await.expect("connect");
        database.migrate().await.expect("migrate");
        Self {
            url,
            database: Mutex::new(database),
            _guard: guard,
        }
    }

    fn database(&self) -> Database {
        self.database.lock().unwrap().clone()
    }
}

impl<G: Send + Sync + 'static> Broker for OutboxBroker<G> {
    async fn sink(&self) -> Arc<dyn Sink> {
        Arc::new(OutboxSink::new(self.database()))
    }

    async fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(
            OutboxSubscriber::new(self.database()).with_poll_interval(Duration::from_millis(100)),
        )
    }

    fn capabilities(&self) -> Capabilities {
        OutboxSubscriber::new(self.database()).capabilities()
    }

    fn redelivery_within(&self) -> Duration {
        // A message dropped unsettled is released at once; one whose release
        // did not reach the database, when its lease ends.
        VISIBILITY
    }

    async fn restart(&self) {
        let old = self.database();
        tokio::time::timeout(Duration::from_secs(10), old.close())
            .await
            .expect("the pool closes (no claim left open)");
        let new = Database::connect(&self.url).await.expect("reconnect");
        *self.database.lock().unwrap() = new;
    }
}

mod sqlite {
    use super::*;
    use ferry_testkit::SqliteTestDb;

    async fn broker() -> OutboxBroker<SqliteTestDb> {
        let db = SqliteTestDb::create();
        OutboxBroker::open(db.url.clone(), db).await
    }

    ferry_conformance::suite!(async { broker().await });
}

mod postgres {
    use super::*;
    use ferry_testkit::PgTestDb;

    async fn broker() -> OutboxBroker<PgTestDb> {
        let db = PgTestDb::create().await;
        OutboxBroker::open(db.url.clone(), db).await
    }

    ferry_conformance::suite!(async { broker().await });
}

mod mariadb {
    use super::*;
    use ferry_testkit::MysqlTestDb;

    async fn broker() -> OutboxBroker<MysqlTestDb> {
        let db = MysqlTestDb::create().await;
        OutboxBroker::open(db.url.clone(), db).await
    }

    ferry_conformance::suite!(async { broker().await });
}

/// Beyond the suite: the lease and rows that are not messages.
mod lease {
    use super::*;
    use ferry_conformance::cases::{events, next, publish, unique};
    use ferry_core::Subscription;
    use ferry_testkit::{PgTestDb, SqliteTestDb};

    async fn open(url: &str) -> Database {
        let database = Database::connect(url).await.expect("connect");
        database.migrate().await.expect("migrate");
        database
    }

    /// A consumer that hangs holding a message loses it when its lease ends:
    /// another consumer gets it (second delivery), and the late ack fails.
    async fn a_hung_consumer_loses_its_lease(database: Database) {
        let topic = unique("lease");
        let sub = Subscription::new(&topic, "g");
        let subscriber = |d: &Database| {
            OutboxSubscriber::new(d.clone())
                .with_poll_interval(Duration::from_millis(100))
                .with_visibility_timeout(Duration::from_secs(1))
        };
        let mut hung = subscriber(&database)
            .subscribe(&sub)
            .await
            .expect("subscribe");
        let sink: Arc<dyn Sink> = Arc::new(OutboxSink::new(database.clone()));
        let sent = events(&topic, 1);
        publish(&sink, &sent).await;
        let held = next(&mut hung, "first delivery").await;
        assert_eq!(held.delivery_count, Some(1));
        let mut other = subscriber(&database)
            .subscribe(&sub)
            .await
            .expect("subscribe");
        let again = next(&mut other, "after the lease").await;
        assert_eq!(again.message.as_ref().expect("message").id, sent[0].id);
        // The hung consumer's own stream may have leased it again meanwhile.
        assert!(
            again.delivery_count >= Some(2),
            "{:?}",
            again.delivery_count
        );
        assert!(held.ack().await.is_err(), "an ack after the lease ended");
        again.ack().await.expect("ack");
        let lag = subscriber(&database).lag(&sub).await.expect("lag");
        assert_eq!(lag.waiting, Some(0));
    }

    /// A row a plain-SQL producer wrote with headers that are not a JSON
    /// object arrives malformed, and an ack removes it.
    async fn a_row_that_is_no_message_arrives_malformed(database: Database, insert: &str) {
        let topic = unique("malformed");
        let sub = Subscription::new(&topic, "g");
        let subscriber = OutboxSubscriber::new(database.clone());
        let mut stream = subscriber.subscribe(&sub).await.expect("subscribe");
        crate::on_pool!(&database, |pool| {
            sqlx::query(insert)
                .bind(&topic)
                .execute(pool)
                .await
                .unwrap();
        });
        let received = next(&mut stream, "the malformed row").await;
        let malformed = received.message.as_ref().expect_err("malformed");
        assert!(malformed.reason.contains("object"), "{}", malformed.reason);
        received.ack().await.expect("ack");
        assert_eq!(subscriber.lag(&sub).await.unwrap().waiting, Some(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_hung_consumer() {
        let db = SqliteTestDb::create();
        a_hung_consumer_loses_its_lease(open(&db.url).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_hung_consumer() {
        let db = PgTestDb::create().await;
        a_hung_consumer_loses_its_lease(open(&db.url).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_malformed_row() {
        let db = SqliteTestDb::create();
        a_row_that_is_no_message_arrives_malformed(
            open(&db.url).await,
            "INSERT INTO ferry_outbox (topic, headers, payload) VALUES (?, '[1]', '{}')",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_malformed_row() {
        let db = PgTestDb::create().await;
        a_row_that_is_no_message_arrives_malformed(
            open(&db.url).await,
            "INSERT INTO ferry_outbox (topic, headers, payload) VALUES ($1, '[1]', '{}')",
        )
        .await;
    }
}
