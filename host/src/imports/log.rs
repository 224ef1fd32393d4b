//! `mxpolicy:policy/log`: plugin log lines go to `tracing`, tagged with the plugin's name.

use crate::{
    bindings::mxpolicy::policy::log::{Host, Level},
    context::CallCtx,
};

/// Longest log line kept; longer lines are cut (a plugin cannot flood the logs).
const MAX_LOG_LINE: usize = 4096;

impl Host for CallCtx {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("...");
        }
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
        if level == Level::Error {
            self.last_error_log = Some(message);
        }
        Ok(())
    }
}
