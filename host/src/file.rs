//! Reading files an operator names (plugin components, configs, scenarios) without trusting
//! them: only regular files, never more than a cap.
//!
//! `std::fs::read("/dev/zero")` reads until memory runs out and `std::fs::read` on a FIFO
//! blocks until a writer appears. Here the path must name a regular file (checked before
//! opening, and again on the open handle), it is opened non-blocking on Unix so a FIFO swapped
//! in between the two checks cannot hang the caller, and at most `max_bytes` are read.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    path::Path,
};

/// Largest plugin component the host reads: 64 MiB. Policy components are a few hundred KiB;
/// this only stops a path like `/dev/zero` or a runaway file from exhausting memory.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;

fn open_nonblocking(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// Read the regular file at `path`, refusing anything else (directories, devices, FIFOs,
/// sockets) and any file larger than `max_bytes`. Errors are `io::Error`s whose message says
/// what was wrong; callers prefix the path.
///
/// ```
/// let dir = std::env::temp_dir().join("mxpolicy-read-bounded-doc");
/// std::fs::write(&dir, b"{}").unwrap();
/// assert_eq!(mxpolicy_host::read_bounded(&dir, 16).unwrap(), b"{}");
/// assert!(mxpolicy_host::read_bounded(&dir, 1).is_err());
/// # #[cfg(unix)]
/// assert!(mxpolicy_host::read_bounded("/dev/zero", 1 << 20).is_err());
/// ```
pub fn read_bounded(path: impl AsRef<Path>, max_bytes: u64) -> io::Result<Vec<u8>> {
    let path = path.as_ref();
    let not_regular = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (devices, FIFOs, sockets and directories are refused)",
        )
    };
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = open_nonblocking(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    let too_large = |size: u64| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file of {size} bytes exceeds the limit of {max_bytes} bytes"),
        )
    };
    if meta.len() > max_bytes {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow between `metadata` and `read`: never read more than the cap.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_bounded_to_string(path: impl AsRef<Path>, max_bytes: u64) -> io::Result<String> {
    String::from_utf8(read_bounded(path, max_bytes)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file is not valid UTF-8"))
}
