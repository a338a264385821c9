//! A consumer in a few lines: take `user.signed_up` events from NATS
//! JetStream and issue one welcome coupon per user, exactly once in effect
//! (the inbox row and the coupon commit in one SQLite transaction).
//!
//! ```sh
//! cargo run -p ferry-consumer --example coupon_consumer -- nats://127.0.0.1:4222 sqlite://coupons.db?mode=rwc
//! ```

use std::sync::Arc;

use ferry_consumer::inbox::{inbox_fn, Inbox};
use ferry_consumer::{HandlerError, Router, StoreDeadLetters};
use ferry_nats::{NatsSinkConfig, NatsSubscriber};
use ferry_store::Database;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let nats = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let database = args
        .next()
        .unwrap_or_else(|| "sqlite://coupons.db?mode=rwc".into());

    let db = Database::connect(&database).await?;
    db.migrate().await?; // Ferry's inbox and dead-letter tables
    let Database::Sqlite(pool) = db.clone() else {
        anyhow::bail!("this example writes its coupons to SQLite")
    };
    sqlx::query("CREATE TABLE IF NOT EXISTS coupons (user_event TEXT NOT NULL)")
        .execute(&pool)
        .await?;

    let mut config = NatsSinkConfig::new(nats.parse()?);
    config.stream = Some("FERRY".into());
    config.subject_prefix = "ferry.".into();

    let issue_coupon = Inbox::new(
        pool,
        inbox_fn(|tx, message, _cx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO coupons (user_event) VALUES (?)")
                    .bind(String::from_utf8_lossy(&message.payload).into_owned())
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| {
                        HandlerError::transient("cannot store the coupon").with_source(e)
                    })?;
                Ok(())
            })
        }),
    );
    let router = Router::builder()
        .subscriber(Arc::new(NatsSubscriber::connect(config).await?))
        .dead_letters(Arc::new(StoreDeadLetters::new(db)))
        .event("user.signed_up", "coupons", issue_coupon)
        .build()?;
    router
        .run(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await?;
    Ok(())
}
