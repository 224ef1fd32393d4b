//! Project tasks. `cargo xtask build-plugins` builds every crate under `policies/` (and the
//! test fixtures under `tests/plugins/`) for `wasm32-unknown-unknown` with the `plugin`
//! profile and turns each core module into a WebAssembly component in
//! `target/plugins/<dir>.wasm`.
//!
//! Why `wasm32-unknown-unknown` plus `wit-component` rather than `wasm32-wasip2`: a wasip2
//! build imports `wasi:cli`, `wasi:io`, ... even when the code uses none of it, and the host
//! refuses every import outside the `mxpolicy:policy` world. The unknown-unknown module
//! imports only what wit-bindgen generated.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const TARGET: &str = "wasm32-unknown-unknown";
const PROFILE: &str = "plugin";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Folders holding plugin crates.
const PLUGIN_DIRS: [&str; 2] = ["policies", "tests/plugins"];

/// `(directory name, package name)` of every plugin crate.
fn policies(root: &Path) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for folder in PLUGIN_DIRS {
        found.extend(crates_in(&root.join(folder))?);
    }
    found.sort();
    Ok(found)
}

fn crates_in(folder: &Path) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    if !folder.is_dir() {
        return Ok(found);
    }
    for entry in
        std::fs::read_dir(folder).with_context(|| format!("reading {}", folder.display()))?
    {
        let dir = entry?.path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest)?;
        let name = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("name = \"")
                    .and_then(|r| r.strip_suffix('"'))
            })
            .with_context(|| format!("no package name in {}", manifest.display()))?;
        let dir_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.push((dir_name, name.to_owned()));
    }
    Ok(found)
}

fn ensure_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = installed
        && String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed");
    }
    Ok(())
}

fn build_plugins(only: &[String]) -> Result<()> {
    let root = workspace_root();
    ensure_target()?;
    let mut policies = policies(&root)?;
    if !only.is_empty() {
        policies.retain(|(dir, _)| only.contains(dir));
        if policies.len() != only.len() {
            bail!("unknown plugin among {only:?}");
        }
    }
    if policies.is_empty() {
        bail!("no policies under {}", root.join("policies").display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--profile", PROFILE, "--target", TARGET]);
    for (_, package) in &policies {
        cmd.args(["--package", package]);
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building the policies failed");
    }
    let target = target_dir(&root);
    let out_dir = target.join("plugins");
    std::fs::create_dir_all(&out_dir)?;
    for (dir, package) in &policies {
        let module_path = target
            .join(TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", package.replace('-', "_")));
        let module = std::fs::read(&module_path)
            .with_context(|| format!("reading {}", module_path.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .and_then(|e| e.validate(true).encode())
            .with_context(|| format!("turning {} into a component", module_path.display()))?;
        let out = out_dir.join(format!("{dir}.wasm"));
        std::fs::write(&out, &component)?;
        println!("built {} ({} KiB)", out.display(), component.len() / 1024);
    }
    Ok(())
}

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("build-plugins") => build_plugins(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => {
            eprintln!("usage: cargo xtask build-plugins [PLUGIN_DIR...]");
            std::process::exit(2);
        }
    }
}
