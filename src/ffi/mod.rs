//! The C ABI: thin wrappers over the Rust API, no logic of their own.
//!
//! Rules every entry point follows (see `include/rcluster.h`):
//! - it returns 0 or a negative `RCLUSTER_E_*` code, and on failure sets a
//!   thread-local message readable with `rcluster_last_error()`;
//! - it runs inside `guard`, so no panic crosses the boundary;
//! - handles are opaque numbers looked up in a registry, never dereferenced,
//!   so NULL, stale, freed or forged handles are an error, never a crash;
//! - every pointer argument is checked for NULL before use.

#![allow(non_camel_case_types)]
// opaque types keep their C names
// These are C entry points: a non-NULL pointer's validity is the C caller's
// contract, stated in the header; NULL is checked in every function.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod channel;
mod handles;
mod messages;
mod options;
mod primary;
mod worker;

pub use crate::tables::c::*;
pub use channel::*;
pub use messages::*;
pub use options::*;
pub use primary::*;
pub use worker::*;

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::LazyLock;

use crate::error::{Code, Error, Result};
use crate::tables::EventKind;

/// Success. Not a code of the table (`crate::tables`): `build.rs` writes it
/// into the header beside them.
pub const RCLUSTER_OK: c_int = 0;
/// Largest message the channel carries, in bytes (256 MiB).
pub const RCLUSTER_MAX_MESSAGE: usize = 268435456;
/// Most file descriptors one message carries.
pub const RCLUSTER_MAX_FDS: usize = 16;

/// This thread's last error. Its C string is made when first asked for:
/// failing calls that are expected and frequent (`RCLUSTER_E_AGAIN` from a
/// non-blocking call) cost no allocation unless the message is read.
struct LastError {
    error: Option<Error>,
    text: Option<CString>,
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = const { RefCell::new(LastError { error: None, text: None }) };
}

/// Records `error` as this thread's last error and returns its code.
fn fail(error: Error) -> c_int {
    let code = error.code() as c_int;
    LAST_ERROR.with(|last| *last.borrow_mut() = LastError { error: Some(error), text: None });
    code
}

/// Runs an entry point's body: catches panics and turns errors into codes.
fn guard(body: impl FnOnce() -> Result<()>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => RCLUSTER_OK,
        Ok(Err(error)) => fail(error),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            fail(Error::new(Code::Panic, format!("internal panic (a bug in rcluster): {what}")))
        }
    }
}

/// A required pointer argument.
fn non_null<'a, T>(ptr: *mut T, name: &str) -> Result<&'a mut T> {
    // SAFETY: the C caller promises a non-NULL pointer is valid and
    // exclusively ours for the call (documented in the header); NULL is caught.
    unsafe { ptr.as_mut() }.ok_or_else(|| Error::new(Code::InvalidArgument, format!("{name} is NULL")))
}

/// Stores `value` through an optional out-pointer (NULL: the caller does not want it).
fn write_optional<T>(ptr: *mut T, value: T) {
    // SAFETY: a non-NULL out-pointer is valid for a write (the header's contract).
    if let Some(out) = unsafe { ptr.as_mut() } {
        *out = value;
    }
}

/// A required C string argument, as UTF-8.
fn c_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::new(Code::InvalidArgument, format!("{name} is NULL")));
    }
    // SAFETY: non-NULL; the caller promises a NUL-terminated string (header).
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Error::new(Code::InvalidArgument, format!("{name} is not valid UTF-8")))
}

/// A length from C: over the largest message is refused before any slice
/// is made (a slice longer than `isize::MAX` bytes is undefined behaviour
/// even unread, and `SIZE_MAX` wraps any sum it enters).
fn check_len(len: usize, name: &str) -> Result<()> {
    if len > crate::channel::MAX_MESSAGE {
        let limit = crate::channel::MAX_MESSAGE;
        return Err(Error::new(Code::TooBig, format!("{name} is {len} bytes; the limit is {limit}")));
    }
    Ok(())
}

/// A byte buffer argument: (NULL, 0) is the empty buffer.
fn bytes<'a>(data: *const u8, len: usize, name: &str) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    check_len(len, name)?;
    if data.is_null() {
        return Err(Error::new(Code::InvalidArgument, format!("{name} is NULL but its length is {len}")));
    }
    // SAFETY: non-NULL; the caller promises `len` readable bytes (header).
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// The messages of a `*_send_many` call: `count` buffers, `data[i]` of
/// `lens[i]` bytes ((NULL, 0) is an empty one).
fn message_list<'a>(data: *const *const c_void, lens: *const usize, count: usize) -> Result<Vec<&'a [u8]>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if data.is_null() || lens.is_null() {
        return Err(Error::new(Code::InvalidArgument, format!("data or lens is NULL but count is {count}")));
    }
    if count > crate::channel::MAX_MESSAGE / 4 {
        return Err(Error::new(
            Code::TooBig,
            format!("{count} messages in one call; the limit is {}", crate::channel::MAX_MESSAGE / 4),
        ));
    }
    // SAFETY: non-NULL; the caller promises `count` entries in each array (header).
    let (data, lens) = unsafe { (std::slice::from_raw_parts(data, count), std::slice::from_raw_parts(lens, count)) };
    let mut messages = Vec::with_capacity(count);
    let mut total: usize = 0;
    for (i, (&d, &len)) in data.iter().zip(lens).enumerate() {
        check_len(len, &format!("message {i}"))?;
        total = total.saturating_add(len);
        if total > isize::MAX as usize / 2 {
            return Err(Error::new(Code::TooBig, "the messages add up to more than memory can hold"));
        }
        if len == 0 {
            messages.push(&[][..]);
        } else if d.is_null() {
            return Err(Error::new(Code::InvalidArgument, format!("data[{i}] is NULL but its length is {len}")));
        } else {
            // SAFETY: non-NULL; the caller promises `len` readable bytes (header).
            messages.push(unsafe { std::slice::from_raw_parts(d as *const u8, len) });
        }
    }
    Ok(messages)
}

/// The message of this thread's last failed call: a NUL-terminated string
/// owned by the library, valid until the next failing call on this thread.
/// Empty if no call has failed on this thread.
#[no_mangle]
pub extern "C" fn rcluster_last_error() -> *const c_char {
    LAST_ERROR.with(|last| {
        let mut last = last.borrow_mut();
        let LastError { error, text } = &mut *last;
        text.get_or_insert_with(|| match error {
            Some(e) => CString::new(e.message().replace('\0', " ")).unwrap_or_default(),
            None => CString::default(),
        })
        .as_ptr()
    })
}

/// The OS errno behind this thread's last failed call, or 0 if none was involved.
#[no_mangle]
pub extern "C" fn rcluster_last_errno() -> c_int {
    LAST_ERROR.with(|last| last.borrow().error.as_ref().map_or(0, Error::errno))
}

/// A static description of an `RCLUSTER_E_*` code (never NULL; not to be freed).
#[no_mangle]
pub extern "C" fn rcluster_strerror(code: c_int) -> *const c_char {
    // The table's messages are Rust strings; their C copies are made once.
    static MESSAGES: LazyLock<Vec<(c_int, CString)>> = LazyLock::new(|| {
        Code::ALL.iter().map(|c| (c.raw(), CString::new(c.message()).expect("no NUL in a message"))).collect()
    });
    if code == RCLUSTER_OK {
        return c"success".as_ptr();
    }
    match MESSAGES.iter().find(|(c, _)| *c == code) {
        Some((_, text)) => text.as_ptr(),
        None => c"unknown error code".as_ptr(),
    }
}

/// The name of an `RCLUSTER_EVENT_*` kind as every binding spells it
/// (`"crash_loop"` for `RCLUSTER_EVENT_CRASH_LOOP`: the constant's suffix in
/// lower case); "unknown" for a number that is not a kind. Static, never NULL,
/// not to be freed.
#[no_mangle]
pub extern "C" fn rcluster_event_name(kind: c_int) -> *const c_char {
    static NAMES: LazyLock<Vec<(c_int, CString)>> = LazyLock::new(|| {
        EventKind::ALL.iter().map(|k| (k.raw(), CString::new(k.name()).expect("no NUL in a name"))).collect()
    });
    match NAMES.iter().find(|(k, _)| *k == kind) {
        Some((_, name)) => name.as_ptr(),
        None => c"unknown".as_ptr(),
    }
}

/// The library's version as a static NUL-terminated string (not to be freed).
#[no_mangle]
pub extern "C" fn rcluster_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_gives_the_table_message() {
        for code in Code::ALL {
            // SAFETY: rcluster_strerror returns a static NUL-terminated string.
            let text = unsafe { CStr::from_ptr(rcluster_strerror(code.raw())) };
            assert_eq!(text.to_str().unwrap(), code.message());
        }
        assert_eq!(RCLUSTER_MAX_MESSAGE, crate::channel::MAX_MESSAGE);
        assert_eq!(RCLUSTER_MAX_FDS, crate::channel::MAX_FDS);
    }
}
