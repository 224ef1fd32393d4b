//! `mxpolicy:policy/log`: plugin log lines go to `tracing`, tagged with the plugin's instance
//! name.
//!
//! A plugin cannot flood or forge the log: each line is cut at [`MAX_LOG_LINE`] bytes, control
//! characters (CR, LF, ESC, NUL, ...) and Unicode line separators are escaped, and a call may
//! write at most [`MAX_LOG_LINES_PER_CALL`] lines and [`MAX_LOG_BYTES_PER_CALL`] bytes; later
//! lines are dropped and counted, and the count is logged once when the call ends.

use crate::{
    bindings::mxpolicy::policy::log::{Host, Level},
    context::{CallCtx, MAX_LOG_BYTES_PER_CALL, MAX_LOG_LINES_PER_CALL},
    text,
};

/// Longest log line kept; longer lines are cut.
const MAX_LOG_LINE: usize = 4096;

impl Host for CallCtx {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let message = text::sanitize(&message, MAX_LOG_LINE);
        if self.log_lines >= MAX_LOG_LINES_PER_CALL
            || self.log_bytes + message.len() > MAX_LOG_BYTES_PER_CALL
        {
            self.log_dropped += 1;
            return Ok(());
        }
        self.log_lines += 1;
        self.log_bytes += message.len();
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

impl CallCtx {
    /// Report the lines dropped during the call, once, when it ends.
    pub(crate) fn flush_log(&mut self) {
        if self.log_dropped > 0 {
            tracing::warn!(
                plugin = &*self.plugin,
                "{} log lines dropped: a call may log {MAX_LOG_LINES_PER_CALL} lines and \
                 {MAX_LOG_BYTES_PER_CALL} bytes",
                self.log_dropped
            );
            self.log_dropped = 0;
        }
    }
}
