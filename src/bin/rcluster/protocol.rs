//! CLI <-> daemon: one JSON request per connection, one JSON response, each
//! a line, over a Unix stream socket in the per-user directory.
//!
//! # Who may talk to the daemon
//!
//! The directory is `$RCLUSTER_HOME`, else `$XDG_RUNTIME_DIR/rcluster`, else
//! `/tmp/rcluster-UID`: created mode 0700, and the daemon refuses to use one
//! owned by another user or open to others. The socket is mode 0600 and the
//! daemon also checks each caller's uid (SO_PEERCRED): another user can
//! neither reach the socket nor, if they could, be answered.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::app::AppSpec;
use crate::{fail, Fail, Res};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Start { apps: Vec<AppSpec> },
    Ls,
    Reload { name: String },
    Restart { name: String },
    Stop { name: String },
    Delete { name: String },
    Scale { name: String, instances: u32 },
    Describe { name: String },
    Kill,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(message: impl Into<String>, data: serde_json::Value) -> Response {
        Response { ok: true, message: message.into(), data }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response { ok: false, message: message.into(), data: serde_json::Value::Null }
    }
}

/// The per-user directory (not created), absolute.
pub fn home() -> PathBuf {
    if let Some(home) = std::env::var_os("RCLUSTER_HOME").filter(|h| !h.is_empty()) {
        let home = PathBuf::from(home);
        return std::path::absolute(&home).unwrap_or(home);
    }
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|h| !h.is_empty()) {
        return PathBuf::from(runtime).join("rcluster");
    }
    // SAFETY: getuid cannot fail.
    PathBuf::from(format!("/tmp/rcluster-{}", unsafe { libc::getuid() }))
}

/// Creates the directory (0700) if needed, and refuses one that others own or can open.
pub fn ensure_home() -> Res<PathBuf> {
    let home = home();
    if !home.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&home)
            .map_err(|e| Fail(format!("cannot create {}: {e}", home.display())))?;
    }
    // Not following a symlink: someone else could have planted one at /tmp/rcluster-UID.
    let meta = std::fs::symlink_metadata(&home).map_err(|e| Fail(format!("{}: {e}", home.display())))?;
    if meta.file_type().is_symlink()
        && std::env::var_os("RCLUSTER_HOME").is_none()
        && std::env::var_os("XDG_RUNTIME_DIR").is_none()
    {
        fail!("{} is a symlink; remove it or set RCLUSTER_HOME", home.display());
    }
    let meta = std::fs::metadata(&home).map_err(|e| Fail(format!("{}: {e}", home.display())))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        fail!("{} belongs to uid {}, not to you (uid {me})", home.display(), meta.uid());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fail!("{} is open to other users (mode {:o}); chmod 700 it", home.display(), meta.permissions().mode() & 0o777);
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(home.join("logs"))?;
    Ok(home)
}

pub fn socket_path() -> PathBuf {
    home().join("daemon.sock")
}

/// Whether a daemon holds this home's lock (`daemon.lock`, which it holds
/// for as long as it lives).
pub fn daemon_alive() -> bool {
    let Ok(lock) = std::fs::File::open(home().join("daemon.lock")) else { return false };
    // SAFETY: flock on an fd we own; the shared lock, if we get it, goes
    // with the file when it closes here.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
}

/// Why the daemon cannot be reached.
#[derive(Debug)]
pub enum Unreachable {
    /// No socket: no daemon was started.
    NoDaemon,
    /// A socket nobody listens on: its daemon died.
    Stale,
    /// Something else (permission denied: another user's daemon).
    Other(std::io::Error),
}

impl Unreachable {
    pub fn message(&self) -> String {
        let socket = socket_path();
        match self {
            Unreachable::NoDaemon => "no daemon is running (`rcluster start` starts one)".into(),
            Unreachable::Stale => format!(
                "no daemon is running: {} is left from a dead daemon (`rcluster start` replaces it)",
                socket.display()
            ),
            Unreachable::Other(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                format!(
                    "cannot reach the daemon at {}: permission denied (it belongs to another user)",
                    socket.display()
                )
            }
            Unreachable::Other(e) => format!("cannot reach the daemon at {}: {e}", socket.display()),
        }
    }
}

pub fn connect() -> Result<UnixStream, Unreachable> {
    let socket = socket_path();
    match UnixStream::connect(&socket) {
        Ok(stream) => Ok(stream),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Unreachable::NoDaemon),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(Unreachable::Stale),
        Err(e) => Err(Unreachable::Other(e)),
    }
}

/// Sends one request and reads its response (the daemon may take as long
/// as the request does: a reload waits for the last worker).
pub fn call(stream: UnixStream, request: &Request) -> Res<Response> {
    let mut line = serde_json::to_string(request).map_err(|e| Fail(e.to_string()))?;
    line.push('\n');
    let sent = (&stream).write_all(line.as_bytes());
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3600)));
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    let read = sent.and_then(|()| reader.read_line(&mut answer));
    if answer.is_empty() {
        // A daemon killed a moment ago may leave its socket open for as
        // long as a child it forked lives (one not yet exec'd): the connect
        // succeeds, and the reset comes when that child dies. Its lock
        // says which it was.
        if !daemon_alive() {
            fail!("{}", Unreachable::Stale.message());
        }
        read?;
        fail!("the daemon closed the connection without answering");
    }
    serde_json::from_str(&answer).map_err(|e| Fail(format!("bad answer from the daemon: {e}")))
}
