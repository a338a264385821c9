//! The whole demo, small and fast, with failures made certain.
#![allow(missing_docs)]

use std::time::Duration;

use ferry_core::RetryPolicy;
use signup_coupon_demo::{run, CouponBehaviour, Options};

/// The coupon service draws each call's fate from a seeded generator in call
/// order, so the first 40 calls always carry the same fates whatever request
/// gets which; 40 users make at least 40 calls. With this seed and these
/// rates those 40 fates include failures before issuing and lost responses,
/// so both happen on every run, and every lost response must end in a
/// suppressed duplicate before the outbox drains. Nothing here depends on
/// timing except the generous timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_gets_exactly_one_coupon_despite_failures_and_redeliveries() {
    let report = run(Options {
        users: 40,
        concurrency: 8,
        coupon: CouponBehaviour {
            min_latency: Duration::from_millis(2),
            max_latency: Duration::from_millis(20),
            fail_rate: 0.3,
            lost_rate: 0.3,
            seed: 42,
        },
        retry: RetryPolicy {
            max_attempts: 50,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            jitter: 0.2,
        },
        timeout: Duration::from_secs(60),
        ..Options::default()
    })
    .await
    .expect("the demo runs");

    assert!(report.success(), "{report}");
    assert_eq!(report.users, 40, "{report}");
    assert_eq!(report.coupons_issued, 40, "{report}");
    assert_eq!(report.users_with_one_coupon, 40, "{report}");
    assert_eq!(report.relay.dead, 0, "{report}");
    assert!(report.coupon_failed_before > 0, "{report}");
    assert!(report.coupon_lost_responses > 0, "{report}");
    // Every lost response is followed by redeliveries until one is answered
    // 200, and that one is suppressed as a duplicate. (Equality would hold
    // too, unless a call timed out on the relay's side after doing its work.)
    assert!(
        report.duplicates_suppressed >= report.coupon_lost_responses,
        "{report}"
    );
}

/// The claim that a slow or broken receiver never slows down the producer:
/// every coupon call takes 200–300 ms and half of them fail, yet nearly every
/// signup (p99) answers faster than the typical coupon call (p50). Signups
/// that waited for their coupon call would take as long as the calls, so
/// their p99 would be near the calls' p99, above the calls' p50 (checked by
/// making each signup sleep 200–300 ms: the test fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signups_do_not_wait_for_the_slow_and_failing_coupon_service() {
    let report = run(Options {
        users: 40,
        concurrency: 8,
        coupon: CouponBehaviour {
            min_latency: Duration::from_millis(200),
            max_latency: Duration::from_millis(300),
            fail_rate: 0.5,
            lost_rate: 0.0,
            seed: 7,
        },
        retry: RetryPolicy {
            max_attempts: 50,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            jitter: 0.2,
        },
        timeout: Duration::from_secs(60),
        ..Options::default()
    })
    .await
    .expect("the demo runs");

    assert!(report.success(), "{report}");
    assert!(report.coupon_failed_before > 0, "{report}");
    assert_eq!(report.signup_latency.count, 40, "{report}");
    assert!(
        report.signup_latency.p99 < report.coupon_latency.p50,
        "signup p99 {:?} is not below the coupon call's p50 {:?}\n{report}",
        report.signup_latency.p99,
        report.coupon_latency.p50
    );
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
