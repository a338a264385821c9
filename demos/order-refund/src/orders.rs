//! The shop's orders: the table, the seed data, and the `order.cancelled`
//! event a cancellation appends.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use sqlx::SqlitePool;

/// The type of the event a cancellation appends.
pub const ORDER_CANCELLED: &str = "order.cancelled";

/// The source type of that event (its source id is the order id).
pub const SOURCE_TYPE: &str = "order";

/// The payload of an `order.cancelled` event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: i64,
    /// What the customer paid, to be refunded, in cents.
    pub amount_cents: i64,
}

/// Where an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Paid, not shipped: may be cancelled.
    Open,
    /// On its way: may not be cancelled.
    Shipped,
    /// Cancelled; its refund follows after commit.
    Cancelled,
}

impl Status {
    /// The value in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Shipped => "shipped",
            Status::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "open" => Status::Open,
            "shipped" => Status::Shipped,
            "cancelled" => Status::Cancelled,
            other => anyhow::bail!("unknown order status `{other}`"),
        })
    }
}

/// An order as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// Its id.
    pub id: i64,
    /// What the customer paid, in cents.
    pub amount_cents: i64,
    /// Where it stands.
    pub status: Status,
}

/// Creates the `orders` table; fails if it already holds orders, since the
/// demo's counts assume a fresh database.
pub async fn create_schema(pool: &SqlitePool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (
            id           INTEGER PRIMARY KEY,
            amount_cents INTEGER NOT NULL,
            status       TEXT NOT NULL CHECK (status IN ('open', 'shipped', 'cancelled')),
            cancelled_at TEXT
        )",
    )
    .execute(pool)
    .await?;
    let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        existing == 0,
        "the database already has {existing} orders from an earlier run; give a fresh file"
    );
    Ok(())
}

/// `count` orders with ids 1..=count and random amounts; `shipped` of them,
/// chosen at random, are shipped, the rest open.
pub fn generate(count: usize, shipped: usize, rng: &mut StdRng) -> Vec<Order> {
    let mut orders: Vec<Order> = (1..=count as i64)
        .map(|id| Order {
            id,
            amount_cents: rng.gen_range(500..=25_000),
            status: Status::Open,
        })
        .collect();
    let mut ids: Vec<usize> = (0..count).collect();
    ids.shuffle(rng);
    for &i in ids.iter().take(shipped) {
        orders[i].status = Status::Shipped;
    }
    orders
}

/// Inserts `orders` in one transaction.
pub async fn insert(pool: &SqlitePool, orders: &[Order]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for order in orders {
        sqlx::query("INSERT INTO orders (id, amount_cents, status) VALUES (?, ?, ?)")
            .bind(order.id)
            .bind(order.amount_cents)
            .bind(order.status.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Every order, by id.
pub async fn all(pool: &SqlitePool) -> anyhow::Result<Vec<Order>> {
    let rows: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT id, amount_cents, status FROM orders ORDER BY id")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(id, amount_cents, status)| {
            Ok(Order {
                id,
                amount_cents,
                status: Status::parse(&status)?,
            })
        })
        .collect()
}
