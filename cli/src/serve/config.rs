//! The `[service]` section of a policy-set file: what `mxpolicy serve` needs beyond the chain.
//!
//! ```toml
//! [service]
//! listen = "127.0.0.1:8480"         # loopback by default; another address needs `public = true`
//! server_name = "hs.example"        # the homeserver the policies work for
//! api_secret_file = "api-secret"    # the shared secret of hook and admin calls (relative)
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use mxpolicy_host::{PolicySet, ruma::OwnedServerName};
use serde::Deserialize;

/// Shortest API secret accepted, in bytes.
const MIN_SECRET_BYTES: usize = 16;

/// `[service]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Address to listen on. Default `127.0.0.1:8480`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Must be `true` to listen on anything but loopback: the hook endpoints carry the
    /// homeserver's users' events, so exposing them is a decision, not a default.
    #[serde(default)]
    pub public: bool,
    /// The homeserver's server name (users of it are local).
    pub server_name: OwnedServerName,
    /// A file holding the shared secret (at least 16 bytes; surrounding whitespace ignored),
    /// relative to the policy-set file.
    pub api_secret_file: PathBuf,
    /// Largest hook or admin request body, in bytes. Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest request body to a plugin's web endpoints, in bytes. Default 64 KiB.
    #[serde(default = "default_max_web_body")]
    pub max_web_body_bytes: usize,
    /// How often the scheduler fires due timers, in ms. Default 1000.
    #[serde(default = "default_timer_interval")]
    pub timer_interval_ms: u64,
    /// Threads that run hook calls (synchronous wasm). Default: one per CPU, at least 2.
    #[serde(default)]
    pub blocking_threads: Option<usize>,
    /// Quiet period before a changed policy-set file is applied, in ms. Default 300.
    #[serde(default = "default_debounce")]
    pub watch_debounce_ms: u64,
    /// Most connections open at once; more are closed as they are accepted. Default 512.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Longest wait for a request's headers, and for the next request on an idle connection,
    /// in seconds (the connection is closed after). Default 10.
    #[serde(default = "default_body_timeout")]
    pub header_timeout_s: u64,
    /// Longest wait for a request body, in seconds (408 after). Default 10.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_s: u64,
    /// Longest wait for requests in flight on SIGTERM, in seconds. Default 30.
    #[serde(default = "default_grace")]
    pub shutdown_grace_s: u64,
    /// Web requests (the plugins' pages, no secret) run at once; more get 503 at once, so
    /// unauthenticated traffic cannot take the threads hook calls need. Default: half the
    /// hook threads, at least 1.
    #[serde(default)]
    pub max_web_requests: Option<usize>,
    /// Most events in one serve request (`context.events`). Default 1000.
    #[serde(default = "default_max_events")]
    pub max_serve_events: usize,
    /// The homeserver's facts endpoint, asked by timer calls (which no request brings facts
    /// to): `GET <facts_url>?question=<rooms_of_user|members_of_room|ever_joined_members>&subject=<id>`
    /// with the API secret as bearer token, answered `{"answer": [ids]}`. `http://` only.
    /// Without it a timer's questions get empty answers (erasure then purges no room).
    #[serde(default)]
    pub facts_url: Option<url::Url>,
    /// A user to show the way in with: printed at start with the consent page and two `curl`
    /// commands (what `mxpolicy init` writes for the sample set).
    #[serde(default)]
    pub sample_user: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8480))
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_max_web_body() -> usize {
    64 << 10
}
fn default_timer_interval() -> u64 {
    1000
}
fn default_debounce() -> u64 {
    300
}
fn default_max_connections() -> usize {
    512
}
fn default_body_timeout() -> u64 {
    10
}
fn default_grace() -> u64 {
    30
}
fn default_max_events() -> usize {
    1000
}

impl ServiceConfig {
    /// The `[service]` section of `set`, checked. Errors name the file and the key.
    pub fn from_set(set: &PolicySet) -> Result<Self, String> {
        let file = set.file.display();
        let Some(table) = &set.service else {
            return Err(format!(
                "{file}: no [service] section (listen, server_name, api_secret_file); \
                 `mxpolicy init DIR` writes a sample"
            ));
        };
        let config: Self = serde_path_to_error::deserialize(toml::Value::Table(table.clone()))
            .map_err(|e| format!("{file}: `service.{}`: {}", e.path(), e.inner()))?;
        if !config.public && !config.listen.ip().is_loopback() {
            return Err(format!(
                "{file}: `service.listen`: {} is not a loopback address; set `public = true` \
                 to listen on it",
                config.listen
            ));
        }
        let ranges: [(&str, u64, std::ops::RangeInclusive<u64>); 9] = [
            ("header_timeout_s", config.header_timeout_s, 1..=600),
            (
                "max_connections",
                config.max_connections as u64,
                1..=100_000,
            ),
            ("body_timeout_s", config.body_timeout_s, 1..=600),
            ("shutdown_grace_s", config.shutdown_grace_s, 0..=3600),
            (
                "max_serve_events",
                config.max_serve_events as u64,
                1..=100_000,
            ),
            (
                "max_body_bytes",
                config.max_body_bytes as u64,
                1024..=(64 << 20),
            ),
            (
                "max_web_body_bytes",
                config.max_web_body_bytes as u64,
                1024..=(16 << 20),
            ),
            (
                "timer_interval_ms",
                config.timer_interval_ms,
                10..=3_600_000,
            ),
            ("watch_debounce_ms", config.watch_debounce_ms, 10..=60_000),
        ];
        for (key, value, range) in ranges {
            if !range.contains(&value) {
                return Err(format!(
                    "{file}: `service.{key}`: {value} is outside {}..={}",
                    range.start(),
                    range.end()
                ));
            }
        }
        for (key, value) in [
            ("blocking_threads", config.blocking_threads),
            ("max_web_requests", config.max_web_requests),
        ] {
            if let Some(n) = value
                && !(1..=1024).contains(&n)
            {
                return Err(format!("{file}: `service.{key}`: {n} is outside 1..=1024"));
            }
        }
        if let Some(url) = &config.facts_url
            && (url.scheme() != "http" || url.host().is_none())
        {
            return Err(format!(
                "{file}: `service.facts_url`: {url} is not an http:// address (the homeserver \
                 on loopback, or its own proxy)"
            ));
        }
        Ok(config)
    }

    /// The API secret, read from its file (relative to the set's directory).
    pub fn api_secret(&self, set_dir: &Path) -> Result<Vec<u8>, String> {
        let path = set_dir.join(&self.api_secret_file);
        let text = mxpolicy_host::read_bounded_to_string(&path, 4096).map_err(|e| {
            format!(
                "`service.api_secret_file`: cannot read {}: {e}",
                path.display()
            )
        })?;
        let secret = text.trim().as_bytes().to_vec();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "`service.api_secret_file`: {} holds {} bytes; a secret has at least \
                 {MIN_SECRET_BYTES}",
                path.display(),
                secret.len()
            ));
        }
        Ok(secret)
    }

    /// Threads for hook calls: the configured number, else one per CPU and at least 2. Hook
    /// calls are CPU-bound wasm with wall-clock deadlines: more threads than CPUs only make
    /// each call slower, until calls miss their deadlines.
    pub fn blocking_threads(&self) -> usize {
        self.blocking_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().max(2)))
    }

    /// Web requests run at once: the configured number, else half the hook threads.
    pub fn web_requests(&self) -> usize {
        self.max_web_requests
            .unwrap_or_else(|| (self.blocking_threads() / 2).max(1))
    }

    /// The scheduler's period.
    pub fn timer_interval(&self) -> Duration {
        Duration::from_millis(self.timer_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(service: &str) -> PolicySet {
        let dir = std::env::temp_dir().join(format!("mxpolicy-svc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join(format!("{}.toml", service.len()));
        std::fs::write(&file, format!("[service]\n{service}\n")).expect("write");
        PolicySet::from_file(&file).expect("set")
    }

    #[test]
    fn errors_name_the_key_and_loopback_is_the_default() {
        let ok = ServiceConfig::from_set(&set(
            "server_name = \"hs.example\"\napi_secret_file = \"s\"",
        ))
        .expect("valid");
        assert!(ok.listen.ip().is_loopback());
        let cases = [
            (
                "server_name = \"hs.example\"\napi_secret_file = \"s\"\nlisten = \"0.0.0.0:80\"",
                "service.listen",
            ),
            (
                "server_name = \"hs.example\"\napi_secret_file = \"s\"\nport = 1",
                "port",
            ),
            (
                "server_name = \"not a name\"\napi_secret_file = \"s\"",
                "service.server_name",
            ),
            (
                "server_name = \"hs.example\"\napi_secret_file = \"s\"\nmax_body_bytes = 1",
                "service.max_body_bytes",
            ),
            ("api_secret_file = \"s\"", "server_name"),
        ];
        for (text, key) in cases {
            let err = ServiceConfig::from_set(&set(text)).expect_err(text);
            assert!(err.contains(key), "{text}: {err}");
        }
        let public = ServiceConfig::from_set(&set(
            "server_name = \"hs.example\"\napi_secret_file = \"s\"\nlisten = \"0.0.0.0:80\"\npublic = true",
        ));
        assert!(public.is_ok());
    }
}
