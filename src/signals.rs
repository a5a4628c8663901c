//! Waiting for what stops a long-running command (`edgetwin hub`, `edgetwin monitor`).

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn stopped() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(stream) => { stream.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
