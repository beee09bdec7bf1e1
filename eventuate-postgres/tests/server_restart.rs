//! (b) The PostgreSQL server is restarted mid-stream: writers retry, the pool reconnects, the
//! listener reconnects with backoff and catches up, and every event is delivered, in order per
//! entity, with the exactly-once view free of duplicates. Runs on a server of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use eventuate_core::Eventuate;
use eventuate_postgres::embedded::{Options, ThrowawayPostgres};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_server_restarted_mid_stream() {
    let server = tokio::task::spawn_blocking(|| ThrowawayPostgres::start(Options::default()))
        .await
        .unwrap()
        .expect("start a dedicated server");
    let db = server.create_database().await.unwrap();
    let store = store(&db.url).await;
    create_view_table(&store).await;
    let recorder = Recorder::new("recorder");
    let runtime = Eventuate::new(store.clone())
        .options(options())
        .subscriber(recorder.clone())
        .subscriber(View {
            id: "view",
            ..View::default()
        })
        .start()
        .unwrap();
    for i in 0..30 {
        tick(&store, &format!("c{}", i % 3), i).await;
    }
    let server = std::sync::Arc::new(server);
    let restarter = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.restart())
    };
    for i in 30..60 {
        tick(&store, &format!("c{}", i % 3), i).await;
    }
    restarter.await.unwrap().expect("restart");
    for i in 60..80 {
        tick(&store, &format!("c{}", i % 3), i).await;
    }
    eventually(30, "80 delivered after the restart", || {
        let n = distinct(&recorder.log);
        async move { n == 80 }
    })
    .await;
    runtime
        .wait_caught_up(Duration::from_secs(20))
        .await
        .unwrap();
    let stored = all_events(&store).await;
    assert_eq!(stored.len(), 80);
    assert_at_least_once_in_order(&recorder.log.lock().unwrap(), &stored);
    assert_view_exactly_once(&store, "view", &stored).await;
    runtime.shutdown().await.unwrap();
}
