//! The connectors' HTTP port (plumbing::serve) bounds what a client can hold: a request whose
//! headers never finish is closed after the header-read timeout, connections over the cap are
//! closed at accept, a half-sent request does not delay shutdown, and /readyz names the failing
//! dependency without its error text.

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use plumbing::readiness::Readiness;
use plumbing::serve::{self, HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

async fn server() -> (
    std::net::SocketAddr,
    Readiness,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let metrics = PrometheusBuilder::new().build_recorder().handle();
    let readiness = Readiness::new("test", &["kafka"]);
    let shutdown = CancellationToken::new();
    let (addr, task) = serve::spawn(
        "127.0.0.1:0".parse().unwrap(),
        metrics,
        readiness.clone(),
        axum::Router::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    (addr, readiness, shutdown, task)
}

/// A connection that sent half a request line's headers and then nothing.
async fn half_sent(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    s
}

/// Reads until the server closes the connection; how long that took.
async fn closed_after(mut s: TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the connection was still open after {within:?}"));
    started.elapsed()
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_request_whose_headers_never_end_is_closed_after_the_timeout() {
    let (addr, _, _, _) = server().await;
    let took = closed_after(half_sent(addr).await, HEADER_READ_TIMEOUT * 3).await;
    assert!(
        took >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "closed after {took:?}, before the timeout"
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_and_the_port_recovers() {
    let (addr, _, _, _) = server().await;
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(half_sent(addr).await);
    }
    // Give the server time to accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let over = TcpStream::connect(addr).await.unwrap();
    let took = closed_after(over, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(2));
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(addr, "/healthz").await.0, 200);
}

#[tokio::test]
async fn a_half_sent_request_does_not_delay_shutdown() {
    let (addr, _, shutdown, task) = server().await;
    let _held = half_sent(addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(4), task)
        .await
        .expect("the server did not stop within 4 s")
        .unwrap();
    assert!(started.elapsed() < HEADER_READ_TIMEOUT);
}

#[tokio::test]
async fn readyz_names_the_dependency_without_its_error_text() {
    let (addr, readiness, _, _) = server().await;
    readiness.set_not_ready("kafka", "broker 10.0.0.1:9092 said: <record key k>");
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("kafka"), "{body}");
    assert!(!body.contains("record key"), "{body}");
    readiness.set_ready("kafka");
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));
}
