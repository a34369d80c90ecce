//! `chronicle serve`: the HTTP API and every projector in one process.

use crate::StoreArgs;
use anyhow::Context;
use tokio::sync::watch;

pub(crate) async fn serve(args: &StoreArgs, addr: &str) -> anyhow::Result<()> {
    let (store, chronicle) = crate::open(args)?;
    let (stop, stopped) = watch::channel(false);
    let mut runners = Vec::new();
    for p in chronicle.projections() {
        let runner = chronicle
            .runner(p.name())
            .context("a registered projection has no runner")?;
        runners.push(tokio::spawn(runner.run(stopped.clone())));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        data_dir = %args.data_dir.display(),
        "chronicle is serving"
    );
    axum::serve(listener, chronicle_http::router(chronicle))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    for r in runners {
        let _ = r.await;
    }
    store.close();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
