//! Ctrl-C and SIGTERM as a cancellation: the attacks and the lab stop their work and still
//! write a (partial) summary or report instead of being killed half way.

use tokio_util::sync::CancellationToken;

/// Cancels `stop` at the first SIGINT or SIGTERM, saying `why` on stderr if given. The
/// handlers are registered before this returns, so a signal that comes early is not lost.
/// Abort the returned task once the work is done.
pub(crate) fn on_signal(
    stop: &CancellationToken,
    why: Option<&'static str>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let stop = stop.clone();
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if let Some(why) = why {
            eprintln!("{why}");
        }
        stop.cancel();
    }))
}
