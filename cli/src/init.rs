//! `mxpolicy init DIR`: write a sample policy set an admin can run at once and then edit.
//!
//! The set runs the three GDPR policies and the keyword filter with SQLite state in `DIR`, a
//! compile cache in `DIR/cache`, and `mxpolicy serve` on loopback. Secrets are generated once
//! (32 random bytes, hex, mode 0600) and reused: running `init` again keeps every file that
//! exists, so the consent links already sent stay valid.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// What `init` needs.
pub struct InitArgs {
    /// The directory to write to (created if missing).
    pub dir: PathBuf,
    /// Where the built plugins are (`consent.wasm`, ...).
    pub plugins: PathBuf,
    /// The port to listen on.
    pub port: u16,
    /// The homeserver's server name.
    pub server_name: String,
}

/// The files written (or kept).
pub const POLICY_SET: &str = "policy-set.toml";

/// Write the sample set; returns the policy-set file's path. Lines on `log` say what was
/// written and what was kept.
pub fn run(args: &InitArgs, log: &mut dyn Write) -> Result<PathBuf, String> {
    let dir = &args.dir;
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let plugins = std::path::absolute(&args.plugins)
        .map_err(|e| format!("{}: {e}", args.plugins.display()))?;
    for name in ["consent", "erasure", "media-ownership", "keyword-filter"] {
        let path = plugins.join(format!("{name}.wasm"));
        if !path.is_file() {
            return Err(format!(
                "{} is missing: build the plugins first (`cargo xtask build-plugins`)",
                path.display()
            ));
        }
    }
    secret(&dir.join("api-secret"), log)?;
    let form = secret(&dir.join("form-secret"), log)?;
    let base = format!("http://127.0.0.1:{}/", args.port);
    write_once(
        &dir.join("consent.toml"),
        &format!(
            "# The consent policy's configuration (see policies/consent/README.md).\n\
             version = \"1.0\"\n\
             policy_name = \"Privacy Policy\"\n\
             policy_text = \"We keep your messages to deliver them, and erase them when you ask.\"\n\
             public_baseurl = \"{base}\"\n\
             form_secret = \"{form}\"\n"
        ),
        log,
    )?;
    let p = |name: &str| toml_string(&plugins.join(format!("{name}.wasm")).display().to_string());
    write_once(
        &dir.join(POLICY_SET),
        &format!(
            "# A sample policy set, written by `mxpolicy init`: edit it while `mxpolicy serve`\n\
             # runs and it is applied at once (or refused, and the running chain stays).\n\n\
             [store]\nurl = \"sqlite:state.db\"\n\n\
             [engine]\ncache_dir = \"cache\"\n\n\
             [service]\nlisten = \"127.0.0.1:{port}\"\nserver_name = {server}\n\
             api_secret_file = \"api-secret\"\nsample_user = {sample}\n\n\
             [[plugin]]\ninstance = \"consent\"\npath = {consent}\nconfig_file = \"consent.toml\"\n\
             failure = {{ on-send = \"closed\" }}\n\n\
             [[plugin]]\ninstance = \"erasure\"\npath = {erasure}\n\n\
             [[plugin]]\ninstance = \"media\"\npath = {media}\n\
             failure = {{ on-media-fetch = \"closed\", on-media-upload = \"closed\" }}\n\n\
             [[plugin]]\ninstance = \"spam\"\npath = {filter}\n\
             config = {{ keywords = [\"buy now\", \"free crypto\"] }}\n",
            port = args.port,
            server = toml_string(&args.server_name),
            sample = toml_string(&format!("@alice:{}", args.server_name)),
            consent = p("consent"),
            erasure = p("erasure"),
            media = p("media-ownership"),
            filter = p("keyword-filter"),
        ),
        log,
    )?;
    Ok(dir.join(POLICY_SET))
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The secret in `path`, generated (mode 0600) if the file does not exist.
fn secret(path: &Path, log: &mut dyn Write) -> Result<String, String> {
    if path.exists() {
        let text = mxpolicy_host::read_bounded_to_string(path, 4096)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let _ = writeln!(log, "kept {}", path.display());
        return Ok(text.trim().to_owned());
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random source: {e}"))?;
    let text = hex::encode(bytes);
    create(path, &format!("{text}\n"))?;
    let _ = writeln!(log, "wrote {}", path.display());
    Ok(text)
}

fn write_once(path: &Path, text: &str, log: &mut dyn Write) -> Result<(), String> {
    if path.exists() {
        let _ = writeln!(log, "kept {}", path.display());
        return Ok(());
    }
    create(path, text)?;
    let _ = writeln!(log, "wrote {}", path.display());
    Ok(())
}

/// Create `path` with `text`, mode 0600 (configs hold secrets).
fn create(path: &Path, text: &str) -> Result<(), String> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
