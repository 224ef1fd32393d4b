//! Reloading a policy set when its files change: the set file, the config files it names and
//! the components, watched with `notify`, debounced, and applied with
//! [`Host::apply`](crate::Host::apply).
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//! use mxpolicy_host::{Host, MemoryHomeserver, PolicySet, Watcher};
//!
//! let set = PolicySet::from_file("/etc/mxpolicy/policy-set.toml")?;
//! let homeserver = Arc::new(MemoryHomeserver::new(mxpolicy_host::ruma::owned_server_name!("hs.example")));
//! let host = Arc::new(set.host_builder(homeserver)?.build()?);
//! host.apply(&set).map_err(|mut problems| problems.remove(0))?;
//! let watcher = Watcher::start(host.clone(), &set.file, Duration::from_millis(300))?;
//! watcher.reload_on_sighup()?; // in a process that owns the host
//! # Ok::<(), mxpolicy_host::Error>(())
//! ```
//!
//! **Debounce.** A change is applied once the watched files have been quiet for the debounce
//! period, so a component copied in chunks (`cp`, an editor's save) is applied once, complete,
//! as long as the writer never pauses longer than the period. A writer that may pause longer
//! should write a temporary file and rename it into place, which is atomic and always safe;
//! the watcher watches directories, so a replacement by rename is seen. A half-written
//! component does not compile, so even then the running chain stays (and the next change is
//! tried again); a half-written policy-set file could parse, which is why renaming matters
//! most for the set file itself.
//!
//! **What is applied.** The whole set, read again from disk, through [`Host::apply`]: all or
//! nothing, every problem logged. A change notification whose files have the same size,
//! modification time and inode as at the last apply is skipped (counted as `unchanged`); an
//! explicit [`Watcher::reload`] or a SIGHUP always applies.
//!
//! **After a rollback.** [`Host::rollback`](crate::Host::rollback) does not rewrite the file:
//! the rolled-back chain runs until the files change again (or a reload is asked for), and
//! then the file is applied as it is. Fix the file before the next change.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode},
};

use crate::{
    error::Error,
    host::{Applied, Host},
    policy_set::PolicySet,
};

/// What one reload did.
#[derive(Debug)]
pub enum Reload {
    /// The set was applied as this generation.
    Applied(Applied),
    /// The files had not changed since the last apply (change notifications only).
    Unchanged,
    /// The set was refused; the running chain stays. Every problem found.
    Refused(Vec<Error>),
}

/// Reloads counted since the watcher started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Sets applied.
    pub applied: u64,
    /// Sets refused (the running chain stayed).
    pub refused: u64,
    /// Change notifications skipped because the files had not changed.
    pub unchanged: u64,
}

enum Msg {
    Fs(notify::Result<notify::Event>),
    Reload(Option<Sender<Reload>>),
    Stop,
}

#[derive(Default)]
struct Counters {
    applied: AtomicU64,
    refused: AtomicU64,
    unchanged: AtomicU64,
}

/// Watches a policy set's files and applies the set to a host when they change. Dropping it
/// stops the watching thread (and the SIGHUP handler, if installed).
pub struct Watcher {
    tx: Sender<Msg>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
    signals: Mutex<Option<(signal_hook::iterator::Handle, JoinHandle<()>)>>,
}

/// (path, size, mtime in ns, inode) of every file of a set: the "has it changed" test.
type Fingerprint = Vec<(PathBuf, u64, i128, u64)>;

fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|f| match std::fs::metadata(f) {
            Ok(m) => (
                f.clone(),
                m.len(),
                i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                m.ino(),
            ),
            Err(_) => (f.clone(), u64::MAX, 0, 0),
        })
        .collect()
}

struct Loop {
    host: Arc<Host>,
    file: PathBuf,
    debounce: Duration,
    counters: Arc<Counters>,
    watcher: RecommendedWatcher,
    /// Files of the set as last read, absolute, and the directories watched for them.
    files: Vec<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    last: Option<Fingerprint>,
}

impl Watcher {
    /// Watch the policy-set file `file` (and the files it names) and apply it to `host`
    /// whenever they change, after `debounce` of quiet. The set is not applied at start:
    /// apply it first ([`Host::apply`]), or call [`Watcher::reload`].
    pub fn start(
        host: Arc<Host>,
        file: impl AsRef<Path>,
        debounce: Duration,
    ) -> Result<Self, Error> {
        let file = std::path::absolute(file.as_ref()).map_err(|e| watch_error(file.as_ref(), e))?;
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let watcher = notify::recommended_watcher(move |event| {
            let _ = events.send(Msg::Fs(event));
        })
        .map_err(|e| watch_error(&file, e))?;
        let counters = Arc::new(Counters::default());
        let mut state = Loop {
            host,
            file: file.clone(),
            debounce,
            counters: counters.clone(),
            watcher,
            files: Vec::new(),
            dirs: BTreeSet::new(),
            last: None,
        };
        // Watch what the set names now, and remember its files as applied.
        let files = state.read_files();
        state.last = Some(fingerprint(&files));
        state.watch(files)?;
        let thread = std::thread::Builder::new()
            .name("mxpolicy-watch".into())
            .spawn(move || state.run(&rx))
            .map_err(|e| watch_error(&file, e))?;
        Ok(Self {
            tx,
            counters,
            thread: Some(thread),
            signals: Mutex::new(None),
        })
    }

    /// Read the set from disk and apply it now, whether or not its files changed; waits for
    /// the answer.
    pub fn reload(&self) -> Reload {
        let (reply, answer) = mpsc::channel();
        if self.tx.send(Msg::Reload(Some(reply))).is_err() {
            return Reload::Refused(vec![Error::Engine("the watcher has stopped".into())]);
        }
        answer.recv().unwrap_or_else(|_| {
            Reload::Refused(vec![Error::Engine("the watcher has stopped".into())])
        })
    }

    /// Reload on SIGHUP, as daemons do. Installs a process-wide signal handler: call it only
    /// in a process that owns the host (a library embedding the host should leave signals to
    /// its application). Uninstalled when the watcher is dropped.
    pub fn reload_on_sighup(&self) -> Result<(), Error> {
        let mut slot = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
            .map_err(|e| Error::Engine(format!("cannot handle SIGHUP: {e}")))?;
        let handle = signals.handle();
        let tx = self.tx.clone();
        let thread = std::thread::Builder::new()
            .name("mxpolicy-sighup".into())
            .spawn(move || {
                for _ in signals.forever() {
                    tracing::info!("SIGHUP: reloading the policy set");
                    if tx.send(Msg::Reload(None)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Engine(format!("cannot handle SIGHUP: {e}")))?;
        *slot = Some((handle, thread));
        Ok(())
    }

    /// Reloads so far.
    pub fn stats(&self) -> WatchStats {
        WatchStats {
            applied: self.counters.applied.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            unchanged: self.counters.unchanged.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some((handle, thread)) = self
            .signals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            handle.close();
            let _ = thread.join();
        }
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch_error(file: &Path, e: impl std::fmt::Display) -> Error {
    Error::PolicySet {
        file: file.display().to_string(),
        entry: None,
        key: String::new(),
        message: format!("cannot watch: {e}"),
    }
}

/// Whether an event can mean new contents: opens and reads cannot.
fn changes_contents(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(AccessKind::Open(_) | AccessKind::Read)
            | EventKind::Access(AccessKind::Close(AccessMode::Read))
    )
}

impl Loop {
    fn run(mut self, rx: &Receiver<Msg>) {
        let mut due: Option<Instant> = None;
        loop {
            let msg = match due {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match msg {
                Ok(Msg::Fs(Ok(event))) => {
                    if changes_contents(&event.kind)
                        && event.paths.iter().any(|p| self.files.contains(p))
                    {
                        // Quiet period starts again at every write.
                        due = Some(Instant::now() + self.debounce);
                    }
                }
                Ok(Msg::Fs(Err(e))) => {
                    tracing::warn!(file = %self.file.display(), "watch error: {e}")
                }
                Ok(Msg::Reload(reply)) => {
                    // A pending change notification still runs (and finds nothing new).
                    let outcome = self.load(true);
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    due = None;
                    self.load(false);
                }
            }
        }
    }

    /// The set's files as the file now names them (only the set file if it cannot be read).
    fn read_files(&self) -> Vec<PathBuf> {
        match PolicySet::from_file(&self.file) {
            Ok(set) => set.files(),
            Err(_) => vec![self.file.clone()],
        }
        .into_iter()
        .map(|f| std::path::absolute(&f).unwrap_or(f))
        .collect()
    }

    /// Watch the directories of `files` (a rename into place is an event of the directory).
    fn watch(&mut self, files: Vec<PathBuf>) -> Result<(), Error> {
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_owned))
            .collect();
        for dir in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(dir);
        }
        for dir in dirs.difference(&self.dirs) {
            self.watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| watch_error(dir, e))?;
        }
        self.dirs = dirs;
        self.files = files;
        Ok(())
    }

    fn load(&mut self, force: bool) -> Reload {
        let outcome = self.apply(force);
        match &outcome {
            Reload::Applied(_) => &self.counters.applied,
            Reload::Refused(problems) => {
                for p in problems {
                    tracing::error!("policy set refused: {p}");
                }
                &self.counters.refused
            }
            Reload::Unchanged => &self.counters.unchanged,
        }
        .fetch_add(1, Ordering::Relaxed);
        // The set may name other files now; a failure to watch one is logged, the rest
        // stays watched.
        let files = self.read_files();
        if let Err(e) = self.watch(files) {
            tracing::error!("{e}");
        }
        outcome
    }

    fn apply(&mut self, force: bool) -> Reload {
        let set = match PolicySet::from_file(&self.file) {
            Ok(set) => set,
            Err(e) => return Reload::Refused(vec![e]),
        };
        let files: Vec<PathBuf> = set
            .files()
            .into_iter()
            .map(|f| std::path::absolute(&f).unwrap_or(f))
            .collect();
        let now = fingerprint(&files);
        if !force && self.last.as_ref() == Some(&now) {
            return Reload::Unchanged;
        }
        match self.host.apply(&set) {
            Ok(applied) => {
                self.last = Some(now);
                Reload::Applied(applied)
            }
            Err(problems) => Reload::Refused(problems),
        }
    }
}
