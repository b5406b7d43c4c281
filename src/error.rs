//! Errors: one type for the whole crate, numbered for the C ABI.
//!
//! Every error carries a [`Code`] (the negative `RCLUSTER_E_*` number a C
//! caller sees), the OS `errno` where one was involved, and a message that
//! says what failed in words a user can act on.

use std::borrow::Cow;
use std::fmt;
use std::io;

pub use crate::tables::Code;

/// The crate's error: a code, an optional errno and a message.
#[derive(Debug, Clone)]
pub struct Error {
    code: Code,
    errno: i32,
    /// Borrowed for fixed messages: the hot paths (would-block, timeout)
    /// then cost no allocation and no formatting.
    message: Cow<'static, str>,
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with a code and a message, no errno.
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Error {
        Error { code, errno: 0, message: message.into() }
    }

    /// An error from the OS, with what we were doing when it happened.
    /// Timeouts and would-block are mapped to their own codes.
    pub fn os(context: &str, err: io::Error) -> Error {
        let errno = err.raw_os_error().unwrap_or(0);
        let code = match err.kind() {
            io::ErrorKind::WouldBlock => Code::WouldBlock,
            io::ErrorKind::TimedOut => Code::Timeout,
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected => Code::Closed,
            _ => Code::Os,
        };
        if code == Code::WouldBlock {
            // Expected on every non-blocking read that finds nothing: no formatting.
            return Error { code, errno, message: Cow::Borrowed("the operation would block (nothing ready yet)") };
        }
        Error { code, errno, message: Cow::Owned(format!("{context}: {err}")) }
    }

    /// The last OS error, with context.
    pub fn last_os(context: &str) -> Error {
        Error::os(context, io::Error::last_os_error())
    }

    /// Same error with the errno set (used where an OS failure has its own code).
    pub fn with_errno(mut self, errno: i32) -> Error {
        self.errno = errno;
        self
    }

    /// The error's code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The OS errno involved, or 0.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
