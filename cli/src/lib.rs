//! The library behind the `mxpolicy` command: the scenario format, the simulated homeserver,
//! scenario replay through the real policy host, plugin checks, and state exports. The binary (`main.rs`) is
//! a thin command-line layer over it.

pub mod check;
pub mod expect;
pub mod export;
pub mod init;
pub mod locate;
pub mod replay;
pub mod scenario;
pub mod serve;
pub mod sim;
