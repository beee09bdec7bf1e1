//! Keeps `examples/stomp-consumer/consumer.py` (a Python service subscribing over STOMP with
//! stomp.py) true: runs it against a server, crashes it once before an acknowledgement, and
//! checks what it printed, including the duplicate it skips after the redelivery.

#[allow(dead_code)]
mod stomp_support;

use serde_json::json;
use stomp_support::{Harness, bounded, options};

const CONSUMER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/stomp-consumer/consumer.py"
);

/// Runs the consumer; its exit code and stdout lines.
async fn consumer(
    h: &Harness,
    seen: &std::path::Path,
    args: &[&str],
) -> (Option<i32>, Vec<String>) {
    let out = tokio::process::Command::new("python3")
        .arg(CONSUMER)
        .args(["--port", &h.addr.port().to_string()])
        .arg("--seen")
        .arg(seen)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'stomp'"),
        "the example needs stomp.py: `python3 -m pip install --break-system-packages stomp.py` \
         (or Debian's `apt-get install python3-stomp`)"
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.code(), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_consumer_prints_each_event_once_across_a_crash() {
    bounded(async {
        let h = Harness::start(options()).await;
        let money = |n: i64| json!({"amount": n});
        h.append(
            "Customer",
            "c-1",
            &[(
                "CustomerCreated",
                json!({"name": "Ada", "credit_limit": money(100)}),
            )],
        )
        .await;
        h.append(
            "Order",
            "o-1",
            &[(
                "OrderCreated",
                json!({"customer_id": "c-1", "total": money(30)}),
            )],
        )
        .await;
        // Not subscribed to: filtered out by the server.
        h.append(
            "Customer",
            "c-1",
            &[(
                "CreditReserved",
                json!({"order_id": "o-1", "amount": money(30)}),
            )],
        )
        .await;
        h.append(
            "Order",
            "o-1",
            &[("OrderApproved", json!({"customer_id": "c-1"}))],
        )
        .await;
        let dir = std::env::temp_dir().join(format!("stomp-consumer-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let seen = dir.join("seen");

        // Crashes after handling the second event, before acknowledging it.
        let (code, lines) = consumer(&h, &seen, &["--crash-after", "2"]).await;
        assert_eq!(code, Some(3), "{lines:?}");
        assert_eq!(
            lines,
            [
                "customer c-1 created: Ada",
                "order o-1 placed by customer c-1"
            ]
        );
        // The next session gets the unacknowledged event again and skips it by its id.
        let (code, lines) = consumer(&h, &seen, &["--max-events", "2"]).await;
        assert_eq!(code, Some(0), "{lines:?}");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("duplicate ") && lines[0].ends_with(" skipped"),
            "{lines:?}"
        );
        assert_eq!(lines[1], "order o-1 approved");
        let _ = std::fs::remove_dir_all(&dir);
        h.stop().await;
    })
    .await;
}
