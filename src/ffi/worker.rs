//! C ABI of the worker side.

use std::ffi::{c_char, c_int, c_void};
use std::os::fd::IntoRawFd;
use std::sync::LazyLock;

use super::handles::Registry;
use super::primary::{empty_event, rcluster_event, worker_event};
use super::{bytes, c_str, guard, message_list, non_null, write_optional};
use crate::error::{Code, Error};
use crate::sys::timeout_from_ms;
use crate::worker::{Listener, Worker};

pub(super) static WORKERS: LazyLock<Registry<Worker>> = LazyLock::new(|| Registry::new(2, "worker"));
static LISTENERS: LazyLock<Registry<Listener>> = LazyLock::new(|| Registry::new(3, "listener"));

/// This process's worker side (opaque).
pub struct rcluster_worker {
    _private: [u8; 0],
}

/// A listening address served through the primary (opaque).
pub struct rcluster_listener {
    _private: [u8; 0],
}

/// 1 if this process was started as a worker (its environment carries
/// `RCLUSTER_WORKER_ID`), 0 otherwise. Never fails.
#[no_mangle]
pub extern "C" fn rcluster_is_worker() -> c_int {
    crate::worker::is_worker() as c_int
}

/// Stores this worker's id (≥ 1) in `*worker_id`; `RCLUSTER_E_STATE` in a
/// process that is not a worker.
#[no_mangle]
pub extern "C" fn rcluster_worker_id(worker_id: *mut u32) -> c_int {
    guard(|| {
        let out = non_null(worker_id, "worker_id")?;
        *out = crate::worker::worker_id().ok_or_else(|| Error::new(Code::State, "this process is not a worker"))?;
        Ok(())
    })
}

/// Opens the worker side from the environment and tells the primary this
/// worker is online. Once per process; free with `rcluster_worker_close`.
#[no_mangle]
pub extern "C" fn rcluster_worker_open(out: *mut *mut rcluster_worker) -> c_int {
    guard(|| {
        let out = non_null(out, "out")?;
        *out = std::ptr::null_mut();
        *out = WORKERS.insert(Worker::open()?);
        Ok(())
    })
}

/// Stores in `*fd` an fd that is readable when an event may be waiting
/// (`rcluster_worker_next_event`). Owned by the worker: do not close it.
#[no_mangle]
pub extern "C" fn rcluster_worker_fd(worker: *mut rcluster_worker, fd: *mut c_int) -> c_int {
    guard(|| {
        let out = non_null(fd, "fd")?;
        *out = WORKERS.get(worker)?.fd();
        Ok(())
    })
}

/// Asks the primary to listen on `host`:`port` and waits up to `timeout_ms`
/// (negative: no limit) for the answer. `host` is an IP address,
/// "localhost", or "" for all IPv4 interfaces. Workers asking for the same
/// address share one listening socket. Port 0 lets the OS pick, as Node's
/// cluster does: a worker's first listener on port 0 at a host shares one
/// port with every other worker's first (and with the primary's own
/// `rcluster_primary_listen` of port 0), its second another port with their
/// seconds, and so on; the count restarts once all of this worker's port-0
/// listeners at that host are closed. A bind failure comes
/// back as `RCLUSTER_E_ADDR` with the errno (EADDRINUSE, EACCES, EINVAL...);
/// a listen while the primary shuts down as `RCLUSTER_E_LEAVING` (leave).
/// Free the listener with `rcluster_listener_close`.
#[no_mangle]
pub extern "C" fn rcluster_worker_listen(
    worker: *mut rcluster_worker,
    host: *const c_char,
    port: u16,
    timeout_ms: c_int,
    out: *mut *mut rcluster_listener,
) -> c_int {
    guard(|| {
        let out = non_null(out, "out")?;
        *out = std::ptr::null_mut();
        let worker = WORKERS.get(worker)?;
        let listener = worker.listen(c_str(host, "host")?, port, timeout_from_ms(timeout_ms))?;
        *out = LISTENERS.insert(listener);
        Ok(())
    })
}

/// Stores the port the listener is bound to (the OS-picked one for port 0).
#[no_mangle]
pub extern "C" fn rcluster_listener_port(listener: *mut rcluster_listener, port: *mut u16) -> c_int {
    guard(|| {
        let out = non_null(port, "port")?;
        *out = LISTENERS.get(listener)?.address().port();
        Ok(())
    })
}

/// Writes the IP address the listener is bound to, NUL-terminated, into
/// `buf` (`capacity` bytes; 46 always suffice), and its port into `*port`
/// (may be NULL). `RCLUSTER_E_TOOBIG` if `capacity` is too small.
#[no_mangle]
pub extern "C" fn rcluster_listener_address(
    listener: *mut rcluster_listener,
    buf: *mut c_char,
    capacity: usize,
    port: *mut u16,
) -> c_int {
    guard(|| {
        if buf.is_null() {
            return Err(Error::new(Code::InvalidArgument, "buf is NULL"));
        }
        let address = LISTENERS.get(listener)?.address();
        let ip = address.ip().to_string();
        if ip.len() + 1 > capacity {
            return Err(Error::new(
                Code::TooBig,
                format!("address {ip} needs {} bytes, capacity is {capacity}", ip.len() + 1),
            ));
        }
        // SAFETY: buf is non-NULL with room for `capacity` >= ip.len() + 1 bytes (caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(ip.as_ptr(), buf as *mut u8, ip.len());
            *buf.add(ip.len()) = 0;
        }
        write_optional(port, address.port());
        Ok(())
    })
}

/// Stores in `*fd` an fd that is readable when `rcluster_listener_accept`
/// may have a connection. Owned by the listener: do not close it.
#[no_mangle]
pub extern "C" fn rcluster_listener_fd(listener: *mut rcluster_listener, fd: *mut c_int) -> c_int {
    guard(|| {
        let out = non_null(fd, "fd")?;
        *out = LISTENERS.get(listener)?.fd();
        Ok(())
    })
}

/// Takes the next connection, waiting up to `timeout_ms` (0: don't wait,
/// `RCLUSTER_E_AGAIN` if none; negative: no limit). `*fd` receives a
/// connected, blocking, close-on-exec socket that the caller owns and must
/// close. After the primary asked this worker to disconnect, the connections
/// already queued are still returned, then `RCLUSTER_E_LEAVING`; when the
/// primary is gone, `RCLUSTER_E_CLOSED`.
#[no_mangle]
pub extern "C" fn rcluster_listener_accept(
    listener: *mut rcluster_listener,
    timeout_ms: c_int,
    fd: *mut c_int,
) -> c_int {
    guard(|| {
        let out = non_null(fd, "fd")?;
        *out = -1;
        let listener = LISTENERS.get(listener)?;
        *out = listener.accept(timeout_from_ms(timeout_ms))?.into_raw_fd();
        Ok(())
    })
}

/// Takes up to `capacity` connections at once (at least one), waiting up to
/// `timeout_ms` for the first as `rcluster_listener_accept` does; only
/// connections already queued join the batch. Stores them in `fds[0..*count]`
/// (each the caller's to close, as from `rcluster_listener_accept`). The
/// batch costs one acknowledgement to the primary, not one per connection:
/// a busy worker that takes what is queued saves the primary wake-ups.
/// Under `shared` (the workers accept on one socket) it takes one connection
/// per call, so a slow worker cannot hoard the shared queue; under
/// `reuseport` the socket is this worker's own and the batch is as above.
/// On error `*count` is 0 and no fd is returned.
#[no_mangle]
pub extern "C" fn rcluster_listener_accept_many(
    listener: *mut rcluster_listener,
    timeout_ms: c_int,
    fds: *mut c_int,
    capacity: usize,
    count: *mut usize,
) -> c_int {
    guard(|| {
        let count = non_null(count, "count")?;
        *count = 0;
        if fds.is_null() {
            return Err(Error::new(Code::InvalidArgument, "fds is NULL"));
        }
        if capacity == 0 {
            return Err(Error::new(Code::InvalidArgument, "capacity must be at least 1"));
        }
        let listener = LISTENERS.get(listener)?;
        let taken = listener.accept_many(capacity, timeout_from_ms(timeout_ms))?;
        // SAFETY: non-NULL, and the caller promises `fds` points to
        // `capacity` writable ints (header); accept_many returned at most
        // `capacity` connections.
        let out = unsafe { std::slice::from_raw_parts_mut(fds, capacity) };
        for (slot, fd) in out.iter_mut().zip(taken) {
            *slot = fd.into_raw_fd();
            *count += 1;
        }
        Ok(())
    })
}

/// Stops taking this address's connections (those queued here go to other
/// workers) and frees the listener handle.
#[no_mangle]
pub extern "C" fn rcluster_listener_close(listener: *mut rcluster_listener) -> c_int {
    guard(|| {
        LISTENERS.remove(listener)?.close();
        Ok(())
    })
}

/// Takes the next worker event without waiting (`RCLUSTER_E_AGAIN` if none):
/// `RCLUSTER_EVENT_MESSAGE`, `RCLUSTER_EVENT_DISCONNECT` or
/// `RCLUSTER_EVENT_PRIMARY_GONE`. After PRIMARY_GONE: `RCLUSTER_E_CLOSED`.
#[no_mangle]
pub extern "C" fn rcluster_worker_next_event(worker: *mut rcluster_worker, event: *mut rcluster_event) -> c_int {
    rcluster_worker_wait_event(worker, event, 0)
}

/// Waits up to `timeout_ms` (negative: no limit) for the next worker event;
/// `RCLUSTER_E_TIMEOUT` when none came (`RCLUSTER_E_AGAIN` for 0).
#[no_mangle]
pub extern "C" fn rcluster_worker_wait_event(
    worker: *mut rcluster_worker,
    event: *mut rcluster_event,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        let out = non_null(event, "event")?;
        *out = empty_event();
        let worker = WORKERS.get(worker)?;
        match worker.next_event(timeout_from_ms(timeout_ms))? {
            Some(ev) => {
                *out = worker_event(ev, worker.id(), worker.pid());
                Ok(())
            }
            None if timeout_ms == 0 => Err(Error::new(Code::WouldBlock, "no event is waiting")),
            None => Err(Error::new(Code::Timeout, "no event arrived in time")),
        }
    })
}

/// Tells the primary this worker is ready to serve. Only needed when the
/// primary waits for it (`wait_ready`): then a replacement counts as started,
/// and the worker it replaces is stopped, only after this call.
#[no_mangle]
pub extern "C" fn rcluster_worker_ready(worker: *mut rcluster_worker) -> c_int {
    guard(|| WORKERS.get(worker)?.ready())
}

/// Tells the primary that `count` connections this worker accepted are
/// finished (closed). The load-aware policy (`RCLUSTER_POLICY_LEAST`) uses
/// it to know how busy each worker is; other policies ignore it. Call it
/// when you close an accepted connection.
#[no_mangle]
pub extern "C" fn rcluster_worker_done(worker: *mut rcluster_worker, count: u32) -> c_int {
    guard(|| WORKERS.get(worker)?.done(count))
}

/// Stores in `*reports` 1 if the primary wants `rcluster_worker_done`
/// reports (its policy is load-aware), else 0. Known once a listen has been
/// answered (0 before): a binding that reports from a hot path, or through
/// a costly call, may skip `rcluster_worker_done` when this is 0.
#[no_mangle]
pub extern "C" fn rcluster_worker_reports_done(worker: *mut rcluster_worker, reports: *mut c_int) -> c_int {
    guard(|| {
        let out = non_null(reports, "reports")?;
        *out = WORKERS.get(worker)?.reports_done() as c_int;
        Ok(())
    })
}

/// Sends `len` bytes (copied) to the primary; blocks while the channel is full.
#[no_mangle]
pub extern "C" fn rcluster_worker_send(worker: *mut rcluster_worker, data: *const c_void, len: usize) -> c_int {
    guard(|| {
        let worker = WORKERS.get(worker)?;
        worker.send(bytes(data as *const u8, len, "data")?)
    })
}

/// Sends `count` messages, in order: message `i` is `lens[i]` bytes at
/// `data[i]` (copied). Small messages share records, so a batch costs a few
/// system calls instead of one per message; the primary still reports each
/// as its own `RCLUSTER_EVENT_MESSAGE`. Blocks while the channel is full.
#[no_mangle]
pub extern "C" fn rcluster_worker_send_many(
    worker: *mut rcluster_worker,
    data: *const *const c_void,
    lens: *const usize,
    count: usize,
) -> c_int {
    guard(|| {
        let worker = WORKERS.get(worker)?;
        worker.send_many(&message_list(data, lens, count)?)
    })
}

/// Leaves the cluster gracefully (connections still queued here go to other
/// workers, the primary hears a goodbye, the channel closes) and frees the
/// handle. Listeners of this worker stop working; close them too.
#[no_mangle]
pub extern "C" fn rcluster_worker_close(worker: *mut rcluster_worker) -> c_int {
    guard(|| {
        WORKERS.remove(worker)?.close();
        Ok(())
    })
}
