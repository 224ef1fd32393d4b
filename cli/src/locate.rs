//! Finding plugin files: relative to a base directory (the scenario file's, or the current
//! one), else in the built plugins directory.

use std::path::{Path, PathBuf};

/// The built plugins directory: `$MXPOLICY_PLUGIN_DIR`, else `target/plugins` next to this
/// binary's `target/<profile>/` directory, else `./target/plugins`.
pub fn plugin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MXPOLICY_PLUGIN_DIR") {
        return PathBuf::from(dir);
    }
    let beside_exe = std::env::current_exe().ok().and_then(|exe| {
        // target/debug/mxpolicy -> target/plugins
        let dir = exe.parent()?.parent()?.join("plugins");
        dir.is_dir().then_some(dir)
    });
    beside_exe.unwrap_or_else(|| PathBuf::from("target").join("plugins"))
}

/// Resolve a plugin reference: `base/<path>`, then `<plugins dir>/<path>`, then (for a bare
/// name without extension) `<plugins dir>/<path>.wasm`. Absolute paths are taken as they are.
/// Only regular files are plugins: when none is found, a candidate that exists but is a
/// device, a FIFO or a socket is the error; directories are skipped. (The host reads the file
/// itself, again refusing anything but a regular file, and caps its size.)
pub fn resolve(reference: &str, base: &Path) -> Result<PathBuf, String> {
    let given = Path::new(reference);
    let mut tried = Vec::new();
    if given.is_absolute() {
        tried.push(given.to_path_buf());
    } else {
        let dir = plugin_dir();
        tried.push(base.join(given));
        tried.push(dir.join(given));
        if given.extension().is_none() {
            tried.push(dir.join(format!("{reference}.wasm")));
        }
    }
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    // Something there that is not a file: a device such as /dev/zero, a FIFO or a socket is
    // an error of its own ("not found" would puzzle); a directory is skipped and named.
    let mut looked = Vec::new();
    for p in &tried {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => looked.push(format!("{} (a directory)", p.display())),
            Ok(_) => {
                return Err(format!(
                    "plugin `{reference}`: {} is not a regular file (devices, FIFOs and \
                     sockets are refused)",
                    p.display()
                ));
            }
            Err(_) => looked.push(p.display().to_string()),
        }
    }
    Err(format!(
        "plugin file `{reference}` not found (looked at: {}); build plugins with `cargo xtask \
         build-plugins`, or set MXPOLICY_PLUGIN_DIR",
        looked.join(", ")
    ))
}
