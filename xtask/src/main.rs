//! Project tasks.
//!
//! - `cargo xtask build-plugins [PLUGIN_DIR...]` builds every plugin crate (the crates under
//!   `policies/` and the test fixtures under `tests/plugins/`), or only those named by their
//!   directory, for `wasm32-unknown-unknown` with the `plugin` profile, and turns each core
//!   module into a WebAssembly component in `target/plugins/<dir>.wasm`.
//! - `cargo xtask plugin-packages` prints the package name of every plugin crate, one per line
//!   (in the order of their directories), for scripts: `scripts/test.sh` lints them for wasm.
//!
//! Plugin crates are found with `cargo_metadata` (`cargo metadata --no-deps`): the workspace
//! members whose manifest is `policies/<dir>/Cargo.toml` or `tests/plugins/<dir>/Cargo.toml`.
//! Each must have a `cdylib` library target; the core module cargo writes is named after that
//! target.
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
use cargo_metadata::{Metadata, MetadataCommand, TargetKind};

const TARGET: &str = "wasm32-unknown-unknown";
const PROFILE: &str = "plugin";

/// Folders holding plugin crates, relative to the workspace root.
const PLUGIN_DIRS: [&str; 2] = ["policies", "tests/plugins"];

/// A plugin crate of the workspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Plugin {
    /// Its directory's name: the component is `target/plugins/<dir>.wasm`.
    dir: String,
    /// Its package name, for `cargo build --package`.
    package: String,
    /// Its `cdylib` target's name: the core module is `<name with _ for ->.wasm`.
    lib: String,
}

/// The workspace, as `cargo metadata --no-deps` describes it.
fn metadata() -> Result<Metadata> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    MetadataCommand::new()
        .manifest_path(manifest)
        .no_deps()
        .exec()
        .context("running `cargo metadata`")
}

/// Every plugin crate of the workspace, sorted by directory.
fn plugins(metadata: &Metadata) -> Result<Vec<Plugin>> {
    let root = metadata.workspace_root.as_std_path();
    let mut found = Vec::new();
    for package in metadata.workspace_packages() {
        let Some(dir) = package.manifest_path.parent() else {
            continue;
        };
        let in_plugin_folder = dir
            .parent()
            .is_some_and(|folder| PLUGIN_DIRS.iter().any(|f| folder == root.join(f)));
        if !in_plugin_folder {
            continue;
        }
        let lib = package
            .targets
            .iter()
            .find(|t| t.is_kind(TargetKind::CDyLib))
            .with_context(|| {
                format!(
                    "{}: a plugin crate needs `crate-type = [\"cdylib\"]` in [lib]",
                    package.manifest_path
                )
            })?;
        found.push(Plugin {
            dir: dir.file_name().unwrap_or_default().to_owned(),
            package: package.name.to_string(),
            lib: lib.name.clone(),
        });
    }
    found.sort();
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
    let metadata = metadata()?;
    let root = metadata.workspace_root.as_std_path();
    ensure_target()?;
    let mut plugins = plugins(&metadata)?;
    if !only.is_empty() {
        plugins.retain(|p| only.contains(&p.dir));
        if plugins.len() != only.len() {
            bail!("unknown plugin among {only:?}");
        }
    }
    if plugins.is_empty() {
        bail!("no policies under {}", root.join("policies").display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--profile", PROFILE, "--target", TARGET]);
    for plugin in &plugins {
        cmd.args(["--package", &plugin.package]);
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building the policies failed");
    }
    let target: PathBuf = metadata.target_directory.clone().into();
    let out_dir = target.join("plugins");
    std::fs::create_dir_all(&out_dir)?;
    for plugin in &plugins {
        let module_path = target
            .join(TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", plugin.lib.replace('-', "_")));
        let module = std::fs::read(&module_path)
            .with_context(|| format!("reading {}", module_path.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .and_then(|e| e.validate(true).encode())
            .with_context(|| format!("turning {} into a component", module_path.display()))?;
        let out = out_dir.join(format!("{}.wasm", plugin.dir));
        std::fs::write(&out, &component)?;
        println!("built {} ({} KiB)", out.display(), component.len() / 1024);
    }
    Ok(())
}

/// Print the package name of every plugin crate, one per line.
fn plugin_packages() -> Result<()> {
    for plugin in plugins(&metadata()?)? {
        println!("{}", plugin.package);
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build-plugins") => build_plugins(&args[1..]),
        Some("plugin-packages") if args.len() == 1 => plugin_packages(),
        _ => {
            eprintln!(
                "usage: cargo xtask build-plugins [PLUGIN_DIR...]\n       cargo xtask plugin-packages"
            );
            std::process::exit(2);
        }
    }
}
