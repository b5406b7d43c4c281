//! Starting workers: spawn (fork + exec of an argv) by default, or a raw fork
//! that returns in the child for single-threaded C programs.
//!
//! # The environment protocol
//!
//! A spawned worker finds its channel end at fd [`CHILD_CHANNEL_FD`] and two
//! variables in its environment, as Node's workers find `NODE_UNIQUE_ID` and
//! `NODE_CHANNEL_FD`:
//!
//! - [`ENV_WORKER_ID`]: the worker's id, a decimal number ≥ 1;
//! - [`ENV_CHANNEL_FD`]: the fd number of its channel end.
//!
//! [`crate::Worker::open`] reads them, marks the fd close-on-exec and removes
//! both variables, so the worker's own children are ordinary processes.
//!
//! The child also gets `PR_SET_PDEATHSIG(SIGTERM)`, so it is told to stop when
//! the primary's thread that spawned it dies even if the channel hang-up goes
//! unnoticed (the kernel sends it again for each thread of a killed primary
//! the child is handed to, so a handler must bear being run more than once,
//! even inside itself), and (by default) a process group of its own, so a Ctrl-C at the
//! terminal reaches the primary alone and the primary stops workers gracefully.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::channel;
use crate::error::{Code, Error, Result};
use crate::sys;

/// Environment variable holding the worker's id.
pub const ENV_WORKER_ID: &str = "RCLUSTER_WORKER_ID";
/// Environment variable holding the worker's channel fd.
pub const ENV_CHANNEL_FD: &str = "RCLUSTER_CHANNEL_FD";
/// The fd a spawned worker finds its channel end at (as Node uses fd 3).
pub const CHILD_CHANNEL_FD: RawFd = 3;

/// Variables by which a runtime's own IPC names its channel fd (Node's,
/// Bun's and Deno's `child_process.fork`). A primary that such a parent
/// started has them in its environment (Bun and Deno keep them there), and
/// a worker inheriting them would take fd 3, its rcluster channel, for that
/// channel and read the primary's frames itself. A worker gets them only
/// when its own `env` sets them.
const FOREIGN_CHANNEL_VARIABLES: [&str; 3] = ["NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE", "NODE_UNIQUE_ID"];

/// How to start a worker by exec.
#[derive(Clone, Debug, Default)]
pub struct SpawnSpec {
    /// Program and arguments; empty means this process's executable (by the
    /// path it was started by; see `current_argv`) and arguments.
    pub argv: Vec<OsString>,
    /// Variables added to (or replacing in) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Start from an empty environment instead of inheriting this process's.
    pub clear_env: bool,
    /// Working directory; `None` = inherit.
    pub cwd: Option<OsString>,
    /// Put the worker in a process group of its own.
    pub own_process_group: bool,
    /// What the worker's stdin, stdout and stderr are (Node's `stdio` and
    /// `silent`); inherited by default.
    pub stdio: [StdioMode; 3],
}

/// One of a worker's standard streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StdioMode {
    /// The primary's own (the default).
    #[default]
    Inherit,
    /// A pipe whose other end the fork returns to the primary's host.
    Pipe,
    /// /dev/null.
    Null,
}

impl StdioMode {
    fn to_std(self) -> Stdio {
        match self {
            StdioMode::Inherit => Stdio::inherit(),
            StdioMode::Pipe => Stdio::piped(),
            StdioMode::Null => Stdio::null(),
        }
    }
}

/// The primary's ends of a worker's piped stdin, stdout and stderr (`None`
/// where the stream is not a pipe). Dropping one closes it.
pub type StdioPipes = [Option<OwnedFd>; 3];

/// What one fork changes in the primary's [`SpawnSpec`] (Node's
/// `setupPrimary({ exec, args, execArgv, cwd })` between forks). Kept with
/// the worker's slot, so a restart or a reload of that slot starts the
/// same program in the same directory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpawnOverrides {
    /// Program and arguments in place of the spec's; `None` = the spec's.
    pub argv: Option<Vec<OsString>>,
    /// Working directory in place of the spec's; `None` = the spec's.
    pub cwd: Option<OsString>,
    /// Standard streams in place of the spec's; `None` = the spec's.
    pub stdio: Option<[StdioMode; 3]>,
}

impl SpawnOverrides {
    /// `spec` with these overrides applied.
    pub fn apply(&self, spec: &mut SpawnSpec) {
        if let Some(argv) = &self.argv {
            spec.argv = argv.clone();
        }
        if let Some(cwd) = &self.cwd {
            spec.cwd = Some(cwd.clone());
        }
        if let Some(stdio) = self.stdio {
            spec.stdio = stdio;
        }
    }

    /// For the slot's later workers (restarts, reloads): nobody holds the
    /// other end of a pipe made for the first, so their piped streams go to
    /// /dev/null rather than to a pipe whose writes would fail.
    pub fn after_first_fork(&mut self) {
        if let Some(stdio) = &mut self.stdio {
            for mode in stdio.iter_mut().filter(|m| **m == StdioMode::Pipe) {
                *mode = StdioMode::Null;
            }
        }
    }
}

/// A started worker, from the primary's side.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid.
    pub pid: libc::pid_t,
    /// std's handle when it was exec'd (reaped through it), `None` for a raw fork.
    pub child: Option<Child>,
    /// The primary's end of the channel.
    pub channel: OwnedFd,
    /// The primary's ends of the worker's piped standard streams.
    pub stdio: StdioPipes,
}

/// This process's executable and arguments: the default worker argv.
///
/// Resolved once, when the primary is made (see `EventLoop::new`), as the
/// path the program was started by, so that a deploy is followed by reloads
/// and restarts:
/// - one that renames a new file over the program: Linux then names the
///   running executable "`<path> (deleted)`", which cannot be exec'd, while the
///   path names the new program (resolved later anyway, the suffix is dropped);
/// - one that switches a symlink (`current -> releases/N`): the kernel's name
///   for the executable has the symlinks resolved, so `argv[0]` is used when it
///   is a path (has a '/') to this same file, made absolute with its symlinks
///   kept, as Node re-runs its `argv[1]` script path.
pub fn current_argv() -> Result<Vec<OsString>> {
    let running = std::env::current_exe().map_err(|e| Error::os("current_exe", e))?;
    let running = match running.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(path) if !running.exists() => PathBuf::from(OsString::from_vec(path.to_vec())),
        _ => running,
    };
    let mut args = std::env::args_os();
    let exe = match args.next().map(PathBuf::from) {
        Some(arg0) if arg0.as_os_str().as_bytes().contains(&b'/') && same_file(&arg0, &running) => {
            std::path::absolute(&arg0).unwrap_or(running)
        }
        _ => running,
    };
    let mut argv = vec![exe.into_os_string()];
    argv.extend(args);
    Ok(argv)
}

/// Whether two paths name the same file (symlinks followed).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Spawns worker `id` by fork + exec of `spec`.
pub fn spawn(spec: &SpawnSpec, id: u32) -> Result<Spawned> {
    let argv = if spec.argv.is_empty() { current_argv()? } else { spec.argv.clone() };
    let (primary_end, child_end) = channel::socketpair()?;
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    if spec.clear_env {
        command.env_clear();
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    command.env(ENV_WORKER_ID, id.to_string());
    command.env(ENV_CHANNEL_FD, CHILD_CHANNEL_FD.to_string());
    // The service's sockets and its readiness are the primary's business,
    // and the primary's parent's channel is not the worker's.
    for variable in crate::primary::SYSTEMD_VARIABLES.iter().chain(&FOREIGN_CHANNEL_VARIABLES) {
        if !spec.env.iter().any(|(k, _)| k == variable) {
            command.env_remove(variable);
        }
    }
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    command.stdin(spec.stdio[0].to_std()).stdout(spec.stdio[1].to_std()).stderr(spec.stdio[2].to_std());
    let child_fd = child_end.as_raw_fd();
    let primary_fd = primary_end.as_raw_fd();
    // SAFETY: getpid is always safe.
    let parent_pid = unsafe { libc::getpid() };
    let own_group = spec.own_process_group;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (close, dup2, fcntl, prctl, getppid, setpgid,
    // _exit) on fds and values captured by copy; fcntl on fds 0-2 that may be
    // closed just fails.
    unsafe {
        command.pre_exec(move || {
            libc::close(primary_fd);
            if child_fd == CHILD_CHANNEL_FD {
                // dup2 onto itself is a no-op that keeps FD_CLOEXEC: clear it by hand.
                let flags = libc::fcntl(child_fd, libc::F_GETFD);
                if flags == -1 || libc::fcntl(child_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, CHILD_CHANNEL_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The worker inherits stdin, stdout and stderr even where the host
            // marked them close-on-exec (Node does): without this its output
            // would vanish.
            for stdio in 0..3 {
                let flags = libc::fcntl(stdio, libc::F_GETFD);
                if flags != -1 && flags & libc::FD_CLOEXEC != 0 {
                    libc::fcntl(stdio, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                }
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0);
            if libc::getppid() != parent_pid {
                // The primary died between fork and prctl: leave now.
                libc::_exit(1);
            }
            if own_group {
                libc::setpgid(0, 0);
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| Error::os(&format!("spawning worker {:?}", argv[0]), e))?;
    drop(child_end);
    let stdio = [
        child.stdin.take().map(OwnedFd::from),
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ];
    Ok(Spawned { pid: child.id() as libc::pid_t, child: Some(child), channel: primary_end, stdio })
}

/// The result of [`fork_raw`].
#[derive(Debug)]
pub enum Forked {
    /// In the primary: the child's pid and the primary's channel end.
    Parent(Spawned),
    /// In the child: the environment now names the worker; open it with `Worker::open`.
    Child,
}

/// Forks without exec; returns in both processes. Refused when this process
/// has more than one thread, since the child would inherit locks held by
/// threads that do not exist there.
pub fn fork_raw(id: u32) -> Result<Forked> {
    let threads = sys::thread_count().map_err(|e| Error::os("counting threads in /proc/self/task", e))?;
    if threads > 1 {
        return Err(Error::new(
            Code::State,
            format!(
                "raw fork refused: this process has {threads} threads, and a forked child would inherit \
                 their locks in an unknown state; spawn workers by exec instead"
            ),
        ));
    }
    let (primary_end, child_end) = channel::socketpair()?;
    // SAFETY: getpid is always safe.
    let parent_pid = unsafe { libc::getpid() };
    // SAFETY: the process has exactly one thread (checked above), so the child
    // is a complete copy with no lock held by a vanished thread.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::last_os("fork"));
    }
    if pid == 0 {
        drop(primary_end);
        // SAFETY: prctl and getppid with integer arguments; _exit never returns.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0);
            if libc::getppid() != parent_pid {
                libc::_exit(1);
            }
        }
        let fd = child_end.as_fd().as_raw_fd();
        std::mem::forget(child_end); // now owned by the worker, found through the environment
                                     // Single-threaded (checked before fork), so mutating the environment is sound.
        std::env::set_var(ENV_WORKER_ID, id.to_string());
        std::env::set_var(ENV_CHANNEL_FD, fd.to_string());
        crate::worker::become_worker(id, fd);
        return Ok(Forked::Child);
    }
    drop(child_end);
    Ok(Forked::Parent(Spawned { pid, child: None, channel: primary_end, stdio: [None, None, None] }))
}
