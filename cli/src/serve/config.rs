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
    /// Threads that run hook calls (synchronous wasm). Default: 2 per CPU.
    #[serde(default)]
    pub blocking_threads: Option<usize>,
    /// Quiet period before a changed policy-set file is applied, in ms. Default 300.
    #[serde(default = "default_debounce")]
    pub watch_debounce_ms: u64,
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
        let ranges: [(&str, u64, std::ops::RangeInclusive<u64>); 4] = [
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
        if let Some(n) = config.blocking_threads
            && !(1..=1024).contains(&n)
        {
            return Err(format!(
                "{file}: `service.blocking_threads`: {n} is outside 1..=1024"
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

    /// Threads for hook calls: the configured number, else 2 per CPU.
    pub fn blocking_threads(&self) -> usize {
        self.blocking_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() * 2))
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
