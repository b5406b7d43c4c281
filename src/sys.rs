//! Thin, safe wrappers over the few OS calls that std and mio do not offer:
//! eventfd, poll with a deadline, epoll sets, pidfd, thread counting.
//!
//! Every `unsafe` block here passes only valid pointers to memory we own for
//! the duration of the call, and wraps every fd the kernel returns in an
//! `OwnedFd` at once, so nothing leaks and nothing is closed twice.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Turns a `-1` return into the last OS error.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A deadline made from an optional timeout (`None` = wait forever).
#[derive(Clone, Copy, Debug)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// A deadline `timeout` from now, or none.
    pub fn after(timeout: Option<Duration>) -> Deadline {
        Deadline(timeout.map(|t| Instant::now() + t))
    }

    /// Whether the deadline has passed (never, without one).
    pub fn expired(&self) -> bool {
        self.0.is_some_and(|at| at <= Instant::now())
    }

    /// Milliseconds left, for poll(2): -1 = forever, 0 = expired.
    pub fn poll_ms(&self) -> libc::c_int {
        match self.0 {
            None => -1,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                // Round up so a 0.5 ms remainder does not turn into a busy loop.
                let ms = left.as_micros().div_ceil(1000);
                ms.min(i32::MAX as u128) as libc::c_int
            }
        }
    }
}

/// Converts a C-style millisecond timeout (negative = forever) to an Option.
pub fn timeout_from_ms(ms: i32) -> Option<Duration> {
    if ms < 0 {
        None
    } else {
        Some(Duration::from_millis(ms as u64))
    }
}

/// Waits until one of `fds` is ready or the deadline passes; retries on EINTR.
/// Returns the number of ready entries (0 = deadline passed).
pub fn poll(fds: &mut [libc::pollfd], deadline: Deadline) -> io::Result<usize> {
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the call.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, deadline.poll_ms()) };
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A pollfd entry for `fd` with `events`.
pub fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

/// A non-blocking, close-on-exec eventfd used as a level-triggered flag:
/// readable while set.
#[derive(Debug)]
pub struct Flag(OwnedFd);

impl Flag {
    /// Creates a cleared flag.
    pub fn new() -> io::Result<Flag> {
        // SAFETY: plain syscall; the returned fd is wrapped at once.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` is a fresh fd that nothing else owns.
        Ok(Flag(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the fd readable.
    pub fn set(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local u64 to an eventfd we own. EAGAIN
        // (counter at its maximum) still leaves it readable, so errors are moot.
        unsafe { libc::write(self.0.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
    }

    /// Makes the fd unreadable.
    pub fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a local u64 from an eventfd we own;
        // EAGAIN means it was already clear.
        unsafe { libc::read(self.0.as_raw_fd(), &mut value as *mut u64 as *mut libc::c_void, 8) };
    }

    /// The fd, for polling.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll set used as one pollable fd that is readable when any member is.
#[derive(Debug)]
pub struct PollSet(OwnedFd);

impl PollSet {
    /// An epoll set watching `members` for readability (level-triggered).
    pub fn new(members: &[RawFd]) -> io::Result<PollSet> {
        // SAFETY: plain syscall; the returned fd is wrapped at once.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: fresh fd owned by nothing else.
        let set = PollSet(unsafe { OwnedFd::from_raw_fd(fd) });
        for &member in members {
            let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, u64: member as u64 };
            // SAFETY: `ev` is a valid epoll_event for the duration of the call.
            cvt(unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, member, &mut ev) })?;
        }
        Ok(set)
    }

    /// The fd, for polling.
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Opens a pidfd for `pid` (readable once the process exits). `Ok(None)` when
/// the kernel has no pidfd_open, so the caller falls back to polling waitpid.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<Option<OwnedFd>> {
    // SAFETY: plain syscall with integer arguments; the fd is wrapped at once.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOSYS) => Ok(None),
            _ => Err(err),
        };
    }
    // pidfds are close-on-exec from birth. SAFETY: fresh fd owned by nothing else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(ret as RawFd) }))
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
    /// Someone else reaped it (the host called waitpid(-1)): status unknown.
    Unknown,
}

/// Reaps `pid` if it has exited, without blocking. Only ever our own pid:
/// never waitpid(-1), which would steal the host's children.
pub fn try_reap(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for the call.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if ret == 0 {
            return Ok(None);
        }
        if ret == pid {
            return Ok(Some(if libc::WIFSIGNALED(status) {
                ExitStatus::Signal(libc::WTERMSIG(status))
            } else {
                ExitStatus::Code(libc::WEXITSTATUS(status))
            }));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(Some(ExitStatus::Unknown)),
            _ => return Err(err),
        }
    }
}

/// Sends `signal` to `pid`.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    cvt(unsafe { libc::kill(pid, signal) }).map(|_| ())
}

/// The number of threads in this process, from /proc/self/task.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Sets or clears FD_CLOEXEC on `fd`.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a borrowed, open fd with integer arguments.
    let flags = cvt(unsafe { libc::fcntl(raw, libc::F_GETFD) })?;
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(raw, libc::F_SETFD, new) }).map(|_| ())
}

/// Whether `fd` is an open file descriptor.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any integer is harmless; EBADF tells us it is closed.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1
}

/// Reads an int-valued socket option.
pub fn sockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid out-pointers sized for an int.
    cvt(unsafe {
        libc::getsockopt(fd.as_raw_fd(), level, name, &mut value as *mut libc::c_int as *mut libc::c_void, &mut len)
    })?;
    Ok(value)
}

/// `address` as a C sockaddr.
pub fn sockaddr(address: std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match address {
        std::net::SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// How many connections wait in a listening TCP socket's accept queue
/// (`tcpi_unacked` of `TCP_INFO` on a listening socket is its accept
/// backlog). `None` if the kernel does not say.
pub fn accept_backlog(fd: BorrowedFd<'_>) -> Option<u32> {
    // SAFETY: tcp_info is plain integers; all zeros is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid out-pointers sized for a tcp_info.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        )
    };
    // TCP_LISTEN is 10 in the kernel's tcp_states.h (libc does not name it).
    const TCP_LISTEN: u8 = 10;
    (ret == 0 && info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_unacked)
}

/// What the kernel says a process has used: CPU time (user + system) and
/// resident memory, from `/proc/PID/stat` and `/proc/PID/statm`. `None`
/// once the process is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    pub cpu: std::time::Duration,
    pub rss_bytes: u64,
}

/// See [`ProcessUsage`].
pub fn process_usage(pid: libc::pid_t) -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads system constants.
    let (hz, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    let cpu = std::time::Duration::from_micros(ticks * 1_000_000 / hz);
    Some(ProcessUsage { cpu, rss_bytes: pages * page.max(1) as u64 })
}
