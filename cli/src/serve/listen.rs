//! The accept loop: HTTP/1.1 connections served by hyper with the limits `axum::serve` does
//! not set. A client that never finishes its request headers is dropped after the header
//! timeout (idle keep-alive connections included), at most `max_connections` are
//! open at once (more are closed as they are accepted, and counted in a warning), and a
//! graceful stop waits at most `grace` for requests in flight before the process goes on to
//! close its store.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};

/// How connections are limited.
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for a request's headers (and for the next request on an idle connection).
    pub header_timeout: Duration,
    /// Longest wait for requests in flight once `stop` resolved.
    pub grace: Duration,
}

/// Serve `app` on `listener` until `stop` resolves, then answer the requests in flight for at
/// most `limits.grace`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let Limits {
        max_connections,
        header_timeout,
        grace,
    } = limits;
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(max_connections));
    let refused = Arc::new(AtomicU64::new(0));
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: let connections finish.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let n = refused.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    "{max_connections} connections are open (service.max_connections); \
                     {} new ones closed so far",
                    n + 1
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, watcher) = (app.clone(), graceful.watcher());
        tokio::spawn(async move {
            // hyper's header timeout starts with the first byte: a client that connects and
            // sends nothing is dropped here.
            // (`readable()` may answer before any byte has come; `peek` waits for one.)
            let mut first = [0u8; 1];
            if matches!(
                tokio::time::timeout(header_timeout, stream.peek(&mut first)).await,
                Ok(Ok(1..))
            ) {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(true);
                let connection =
                    builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
                let _ = watcher.watch(connection).await;
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("requests still in flight after {grace:?}; stopping anyway");
        }
    }
}
