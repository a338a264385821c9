//! The whole demo, small and fast: the shop's process really is killed and
//! restarted (this package's binary, run with its hidden `shop`
//! subcommand).
#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use ferry_core::RetryPolicy;
use order_refund_demo::{run, Options, PaymentBehaviour};

fn small(payment: PaymentBehaviour) -> Options {
    Options {
        shop_program: PathBuf::from(env!("CARGO_BIN_EXE_order-refund-demo")),
        orders: 30,
        cancels: 16,
        cancels_before_crash: 6,
        shipped: 3,
        crashes: 2,
        cancel_interval: Duration::from_millis(20),
        concurrency: 4,
        seed: 42,
        payment,
        retry: RetryPolicy {
            max_attempts: 50,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            multiplier: 2.0,
            jitter: 0.2,
        },
        // Small pages, so that a crash leaves delivered events past the
        // saved offset, to be delivered again.
        batch_size: 4,
        timeout: Duration::from_secs(90),
        ..Options::default()
    }
}

/// The payment service draws each call's fate from a seeded generator in
/// call order, so the first 16 calls always carry the same fates whatever
/// refund gets which; 16 cancelled orders make at least 16 calls. With this
/// seed and these rates those fates include failures before refunding and
/// lost responses, so both happen on every run, and every lost response
/// must end in a suppressed duplicate. The crash moments are drawn from the
/// seed too; nothing here depends on timing except the generous timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cancelled_order_is_refunded_exactly_once_through_crashes() {
    let report = run(small(PaymentBehaviour {
        min_latency: Duration::from_millis(2),
        max_latency: Duration::from_millis(20),
        fail_rate: 0.3,
        lost_rate: 0.3,
        deduplicate: true,
        seed: 42,
    }))
    .await
    .expect("the demo runs");

    assert!(report.success(), "{report}");
    assert_eq!(report.orders_cancelled, 16, "{report}");
    assert_eq!(report.events, 16, "{report}");
    assert_eq!(report.refunds_made, 16, "{report}");
    assert_eq!(report.orders_refunded_once, 16, "{report}");
    assert_eq!(report.refunds_for_other_orders, 0, "{report}");
    assert_eq!(report.refused, 3, "{report}");
    // Killed three times; the first time every cancellation of the first
    // batch was answered and committed, and no refund call had been made:
    // a cancellation does not wait for its refund.
    assert_eq!(report.crashes.len(), 3, "{report}");
    assert_eq!(report.crashes[0].events_committed, 6, "{report}");
    assert_eq!(report.crashes[0].refund_calls, 0, "{report}");
    assert!(report.payment.failed_before > 0, "{report}");
    assert!(report.payment.lost_responses > 0, "{report}");
    assert!(
        report.payment.duplicates_suppressed >= report.payment.lost_responses,
        "{report}"
    );
    assert!(report.consumer.each_once_in_order, "{report}");
    assert_eq!(report.consumer.events_seen, 16, "{report}");
    assert_eq!(report.forwarder_offset, report.head, "{report}");
}

/// The checks can fail: a payment service that ignores the idempotency
/// key refunds again whenever a refund is delivered again (after a lost
/// response, here certain with this seed and rate), and the report says
/// so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_service_without_deduplication_is_caught_refunding_twice() {
    let report = run(Options {
        crashes: 1,
        ..small(PaymentBehaviour {
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(5),
            fail_rate: 0.0,
            lost_rate: 0.5,
            deduplicate: false,
            seed: 42,
        })
    })
    .await
    .expect("the demo runs");

    assert!(!report.success(), "{report}");
    assert!(report.payment.lost_responses > 0, "{report}");
    assert!(report.orders_refunded_twice > 0, "{report}");
    assert!(report.refunds_made > 16, "{report}");
    assert!(
        report
            .problems()
            .iter()
            .any(|p| p.contains("DOUBLE REFUND")),
        "{report}"
    );
    assert!(report.to_string().contains("FAILED"), "{report}");
    // Everything else held: the events, the forwarder, the consumer.
    assert_eq!(report.events, 16, "{report}");
    assert!(report.consumer.each_once_in_order, "{report}");
}

#[tokio::test]
async fn rejects_a_server_database() {
    let err = run(Options {
        database: Some("postgres://localhost/x".to_owned()),
        ..Options::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("SQLite only"), "{err}");
}
