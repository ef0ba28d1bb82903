//! One shutdown signal for the whole process: SIGTERM or SIGINT cancels a [`CancellationToken`]
//! that every loop `select!`s on. Loops then finish or abandon their in-flight work and return;
//! `main` awaits them with a deadline.

use tokio_util::sync::CancellationToken;

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Returns a token cancelled on the first SIGTERM or SIGINT. A second signal exits at once,
/// for an operator who does not want to wait for the drain.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Shutdown requested, draining");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("Second signal, exiting without draining");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
