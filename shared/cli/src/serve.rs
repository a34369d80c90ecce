//! `chronicle serve`: the HTTP API, every projector and every reaction in one process.

use crate::StoreArgs;
use anyhow::Context;
use tokio::sync::watch;

pub(crate) async fn serve(
    domain: &chronicle_kernel::Domain,
    args: &StoreArgs,
    config: chronicle_kernel::HandlerConfig,
    addr: &str,
    publish_log: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (store, chronicle) = crate::open_with(domain, args, crate::Access::Write, config)?;
    let (stop, stopped) = watch::channel(false);
    let mut runners = Vec::new();
    if let Some(path) = publish_log {
        let publisher = chronicle_embedded::JsonlPublisher::open(path)
            .with_context(|| format!("opening the publish log {}", path.display()))?;
        let runner = chronicle
            .publish_runner(std::sync::Arc::new(publisher))
            .context("the embedded registry has a feed")?;
        runners.push(tokio::spawn(runner.run(stopped.clone())));
    }
    for p in chronicle.projections() {
        let runner = chronicle
            .runner(p.name())
            .context("a registered projection has no runner")?;
        runners.push(tokio::spawn(runner.run(stopped.clone())));
    }
    for r in chronicle.reactions() {
        let runner = chronicle
            .reaction_runner(r.name())
            .context("a registered reaction has no runner")?;
        runners.push(tokio::spawn(runner.run(stopped.clone())));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    // `chronicle rebuild` finds the server here while it holds the directory.
    if let Err(e) = store.advertise(&format!("http://{local}")) {
        tracing::warn!(error = %e, "could not record the address in the lock file");
    }
    tracing::info!(
        addr = %local,
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

/// `chronicle serve --backend aws`: the same API on the AWS adapters, with the stream-driven
/// functions run by local event-source pollers.
pub(crate) async fn serve_aws(
    domain: &chronicle_kernel::Domain,
    addr: &str,
    idempotency_retention: std::time::Duration,
) -> anyhow::Result<()> {
    let mut settings = chronicle_aws::Settings::from_env()?;
    // The flag (or its variable, which Settings reads too) decides.
    settings.idempotency_retention = idempotency_retention;
    let app = chronicle_lambda::App::new(
        chronicle_aws::Clients::from_env().await,
        settings,
        domain.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    let mappings =
        crate::mappings::spawn_all(&app, crate::mappings::MappingConfig::default(), stopped)
            .await
            .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        events_table = %app.settings.events_table,
        endpoint = ?app.clients.sdk.endpoint_url(),
        "chronicle is serving on AWS"
    );
    axum::serve(listener, chronicle_http::router(app.chronicle.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    for m in mappings {
        let _ = m.await;
    }
    Ok(())
}

/// `chronicle aws-setup`.
pub(crate) async fn aws_setup() -> anyhow::Result<()> {
    let settings = chronicle_aws::Settings::from_env()?;
    let clients = chronicle_aws::Clients::from_env().await;
    let report = chronicle_aws::setup::ensure(&clients, &settings)
        .await
        .context("creating the AWS resources")?;
    for line in report {
        println!("{line}");
    }
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
