//! `mxpolicy serve`: the policies as a long-running HTTP service, for homeservers that cannot
//! embed the host crate (Synapse, in Python).
//!
//! It runs the policy set of a policy-set file (`[service]` section: see [`config`]) with its
//! durable store and the outbox on, fires timers on a schedule (their actions wait in the
//! outbox), reapplies the set when its files change (or on SIGHUP, or on `POST
//! /_mxpolicy/v1/admin/reload`), and stops gracefully on SIGTERM or SIGINT: it stops
//! accepting, answers the requests in flight, stops the scheduler and closes the store. The
//! wire format is in [`wire`], the homeserver facts in [`facts`].

pub mod config;
pub mod facts;
pub mod listen;
pub mod routes;
pub mod wire;

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mxpolicy_host::{Host, PolicySet, Watcher};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use self::{config::ServiceConfig, facts::ServiceHomeserver, routes::AppState};

/// Start the service for the policy-set file `file` and run it until SIGTERM or SIGINT.
/// `ready` is written (the address listened on) once the chain is loaded and the socket bound.
pub fn run(file: &Path, ready: &mut dyn Write) -> Result<(), String> {
    run_until(file, ready, shutdown_signal())
}

/// [`run`], stopping gracefully when `stop` resolves instead of on a signal (benchmarks and
/// embedders that own the process's signals).
pub fn run_until(
    file: &Path,
    ready: &mut dyn Write,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let set = PolicySet::from_file(file).map_err(|e| e.to_string())?;
    let config = ServiceConfig::from_set(&set)?;
    let dir = set
        .file
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let secret = config.api_secret(&dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(config.blocking_threads())
        .thread_name("mxpolicy-serve")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;

    let mut homeserver = ServiceHomeserver::new(config.server_name.clone());
    if let Some(url) = &config.facts_url {
        homeserver = homeserver.with_facts_url(url.clone(), &secret);
    }
    let homeserver = Arc::new(homeserver);
    let host = Arc::new(
        set.host_builder(homeserver)
            .map_err(|e| e.to_string())?
            .outbox(true)
            .timer_actions_unclaimed(true)
            .build()
            .map_err(|e| e.to_string())?,
    );
    if set.plugins.iter().any(|p| p.instance == "v1") {
        return Err(format!(
            "{}: the instance name `v1` is reserved in service mode (the API's prefix)",
            set.file.display()
        ));
    }
    let applied = host.apply(&set).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        format!("the policy set was refused:\n{}", lines.join("\n"))
    })?;
    let watcher = Arc::new(
        Watcher::start(
            host.clone(),
            &set.file,
            Duration::from_millis(config.watch_debounce_ms),
        )
        .map_err(|e| e.to_string())?,
    );
    watcher.reload_on_sighup().map_err(|e| e.to_string())?;

    let state = Arc::new(AppState {
        host: host.clone(),
        watcher: watcher.clone(),
        secret_hash: Sha256::digest(&secret).into(),
        config: config.clone(),
        web_permits: Arc::new(tokio::sync::Semaphore::new(config.web_requests())),
    });
    let served_host = host.clone();
    runtime.block_on(async move {
        let host = served_host;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let names: Vec<&str> = applied
            .plugins
            .iter()
            .map(|p| p.instance.as_str())
            .collect();
        let _ = writeln!(
            ready,
            "mxpolicy serve: listening on http://{addr} (generation {}: {})",
            applied.generation,
            names.join(", ")
        );
        if let Some(user) = &config.sample_user {
            let _ = write!(ready, "{}", sample(&host, addr, user, &dir, &config));
        }
        let _ = ready.flush();

        let (stop_tx, stop_rx) = watch::channel(false);
        let scheduler = tokio::spawn(scheduler(host.clone(), config.timer_interval(), stop_rx));
        let app = routes::router(state);
        let limits = listen::Limits {
            max_connections: config.max_connections,
            header_timeout: Duration::from_secs(config.header_timeout_s),
            grace: Duration::from_secs(config.shutdown_grace_s),
        };
        listen::serve(listener, app, limits, stop).await;
        tracing::info!("stopping: requests in flight were answered");
        let _ = stop_tx.send(true);
        let _ = scheduler.await;
        Ok::<(), String>(())
    })?;
    // The watcher's thread and the SIGHUP handler stop with it; the store closes with the
    // host (SQLite checkpoints its WAL on close).
    drop(watcher);
    drop(host);
    runtime.shutdown_timeout(Duration::from_secs(10));
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot handle SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

/// Fire due timers every `every`; their actions wait in the outbox for the homeserver. With
/// a shared PostgreSQL store, each timer is claimed by one process only.
async fn scheduler(host: Arc<Host>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let host = host.clone();
        match tokio::task::spawn_blocking(move || facts::for_timers(|| host.run_timers())).await {
            Ok(Ok(decision)) => {
                let fired = decision.outcome.len();
                if fired > 0 {
                    tracing::info!(
                        fired,
                        actions = decision.actions.len(),
                        failures = decision.failures.len(),
                        "timers fired; their actions are in the outbox"
                    );
                }
            }
            Ok(Err(e)) => tracing::error!("timer pass failed: {e}"),
            Err(e) => tracing::error!("timer pass panicked: {e}"),
        }
    }
}

/// The welcome text for the sample set: the consent page of `user` and two `curl` commands.
fn sample(
    host: &Host,
    addr: std::net::SocketAddr,
    user: &str,
    dir: &Path,
    config: &ServiceConfig,
) -> String {
    let secret_file = dir.join(&config.api_secret_file);
    let consent = host
        .admin("consent", "consent-uri", &json!({ "user": user }))
        .ok()
        .and_then(|v| v["consent_uri"].as_str().map(str::to_owned));
    let event = json!({
        "context": {
            "sender": user,
            "room_id": format!("!sample:{}", config.server_name),
            "room_version": "11",
            "event_type": "m.room.message",
            "content": {"msgtype": "m.text", "body": "hello"},
            "origin_server_ts": 1_700_000_000_000u64,
        }
    });
    let curl = format!(
        "curl -s -H \"Authorization: Bearer $(cat {})\" -d {} http://{addr}/_mxpolicy/v1/hooks/on-send",
        shell_quote(&secret_file.display().to_string()),
        shell_quote(&event.to_string())
    );
    let mut out = String::new();
    out.push_str(&format!("\nSample user: {user}\n"));
    match consent {
        Some(uri) => out.push_str(&format!("Consent page: {uri}\n")),
        None => out.push_str("Consent page: (no `consent` instance in this set)\n"),
    }
    out.push_str(&format!(
        "\n1. Send a message before consenting (denied with M_CONSENT_NOT_GIVEN):\n\n  {curl}\n\
         \n2. Open the consent page above, accept, and send again (allowed):\n\n  {curl}\n\n"
    ));
    out
}

/// `text` single-quoted for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
