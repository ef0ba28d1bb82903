//! SAMPLE DATA: a stand-in for the YouTube Data API v3 serving generated most-popular charts
//! (for the demo without an API key, and for tests). Not YouTube's data.
//!
//! Usage: youtube-standin [ADDR] [REGION=COUNT ...], e.g.
//! `youtube-standin 127.0.0.1:18090 FR=200 US=200 JP=120`; serves under `/youtube/v3`.

use std::net::SocketAddr;

use source_connector::standin::StandIn;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18090".into())
        .parse()
        .expect("the first argument is the address to listen on, e.g. 127.0.0.1:18090");
    let charts: Vec<(String, usize)> = args
        .map(|a| {
            let (region, n) = a.split_once('=').expect("charts are REGION=COUNT");
            (region.to_uppercase(), n.parse().expect("COUNT is a number"))
        })
        .collect();
    let standin = StandIn::start_on(addr).await;
    let charts = if charts.is_empty() {
        vec![("FR".into(), 200), ("US".into(), 200), ("JP".into(), 120)]
    } else {
        charts
    };
    for (region, n) in &charts {
        standin.set_chart(region, *n);
    }
    eprintln!(
        "SAMPLE DATA: YouTube API stand-in on {} with charts {charts:?}",
        standin.url
    );
    std::future::pending::<()>().await;
}
