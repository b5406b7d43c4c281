//! C ABI of the primary: the handle and the calls on it (fork, listen,
//! events, messages, reload, scale, stats, free).

use std::ffi::{c_char, c_int, c_void};
use std::sync::LazyLock;

use super::handles::Registry;
use super::{bytes, c_str, guard, message_list, non_null, write_optional};
use crate::error::{Code, Error, Result};
use crate::primary::{Primary, RawFork};

mod events;

use super::options::{duration_ms, env_pairs};
use events::primary_event;
pub(super) use events::{empty_event, with_data, worker_event};
pub use events::{rcluster_event, rcluster_event_release, RCLUSTER_EVENT_NONE, RCLUSTER_EXIT_AFTER_DISCONNECT};

pub(super) static PRIMARIES: LazyLock<Registry<Primary>> = LazyLock::new(|| Registry::new(1, "primary"));

/// A cluster's primary (opaque).
pub struct rcluster_primary {
    _private: [u8; 0],
}

/// One worker's numbers (`rcluster_primary_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rcluster_worker_stats {
    /// The worker's id.
    pub worker_id: u32,
    /// Its process id.
    pub pid: i32,
    /// Its slot, or -1 for a raw-forked worker.
    pub slot: i32,
    /// `RCLUSTER_WORKER_*`.
    pub state: c_int,
    /// The reload generation it was started in (0 before any reload).
    pub generation: u32,
    /// Restarts its slot has needed.
    pub restarts: u32,
    /// Connections handed to it so far.
    pub dispatched: u64,
    /// Connections handed to it and not yet acknowledged.
    pub in_flight: u32,
    /// Connections it accepted and has not reported finished
    /// (`rcluster_worker_done`); counted under `RCLUSTER_POLICY_LEAST`, and under
    /// `RCLUSTER_POLICY_HYBRID` while the primary hands connections over; else 0.
    pub active: u32,
    /// Milliseconds since it was started.
    pub uptime_ms: u64,
}

/// The primary's own numbers (`rcluster_primary_metrics`). Set
/// `struct_size` to `sizeof` it: the struct may grow at its end, and the
/// library fills only what the caller's size covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct rcluster_metrics {
    /// `sizeof(rcluster_metrics)` as the caller knows it.
    pub struct_size: usize,
    /// Accepted connections waiting for a worker (the dispatch queue).
    pub pending: u32,
    /// Listening sockets open.
    pub listeners: u32,
    /// How often accepting paused for lack of fds or memory.
    pub accept_pauses: u64,
    /// The reload generation new workers are started with.
    pub generation: u32,
    /// 1 while the cluster serves (not stopping, some worker listening), else 0.
    pub serving: c_int,
    /// Workers the primary knows (any state).
    pub workers: u32,
    /// Of those, listening.
    pub workers_listening: u32,
    /// CPU time of the primary's process, in ms.
    pub cpu_ms: u64,
    /// Resident memory of the primary's process, in bytes.
    pub rss_bytes: u64,
    /// CPU time summed over the workers' processes, in ms.
    pub workers_cpu_ms: u64,
    /// Resident memory summed over the workers' processes, in bytes.
    pub workers_rss_bytes: u64,
}

/// One worker's use of the machine and of messages
/// (`rcluster_primary_worker_usage`); sized as `rcluster_metrics` is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct rcluster_worker_usage {
    /// `sizeof(rcluster_worker_usage)` as the caller knows it.
    pub struct_size: usize,
    /// CPU time (user + system) of its process, in ms.
    pub cpu_ms: u64,
    /// Its resident memory, in bytes.
    pub rss_bytes: u64,
    /// Application messages it sent the primary.
    pub messages_in: u64,
    /// Application messages the primary sent it.
    pub messages_out: u64,
}

/// Copies `value` into the caller's `out`, a struct whose first field is
/// its `struct_size`: at most that many bytes (the caller may know an
/// older, smaller struct).
fn write_sized<T: Copy>(out: *mut T, value: T) -> Result<()> {
    if out.is_null() {
        return Err(Error::new(Code::InvalidArgument, "out is NULL"));
    }
    // SAFETY: every such struct starts with its size, a usize the caller set.
    let size = unsafe { std::ptr::read_unaligned(out as *const usize) };
    if size < size_of::<usize>() || size > 1 << 16 {
        return Err(Error::new(Code::InvalidArgument, format!("struct_size {size} is not sizeof the struct")));
    }
    // SAFETY: the caller promises `size` writable bytes; `value` is plain data.
    unsafe {
        let bytes = (&value as *const T as *const u8).add(size_of::<usize>());
        let room = size.min(size_of::<T>()) - size_of::<usize>();
        std::ptr::copy_nonoverlapping(bytes, (out as *mut u8).add(size_of::<usize>()), room);
    }
    Ok(())
}

/// Starts one worker by exec of the configured argv, with the "KEY=VALUE"
/// strings of `env` (NULL-terminated, or NULL) added to its environment.
/// Stores its id and pid (either out-pointer may be NULL). A `FORK` event follows.
#[no_mangle]
pub extern "C" fn rcluster_primary_fork(
    primary: *mut rcluster_primary,
    env: *const *const c_char,
    worker_id: *mut u32,
    pid: *mut i32,
) -> c_int {
    guard(|| {
        let primary = PRIMARIES.get(primary)?;
        let info = primary.fork(env_pairs(env)?)?;
        write_optional(worker_id, info.id);
        write_optional(pid, info.pid);
        Ok(())
    })
}

/// Forks a worker without exec, for single-threaded C programs. Returns 0 in
/// both processes: in the primary `*pid` is the child's pid; in the child
/// `*pid` is 0, the environment names the worker (open it with
/// `rcluster_worker_open`), and this primary handle is dead there (free it).
/// Refused with `RCLUSTER_E_STATE` once the process has other threads, for
/// example after any other primary call started the primary's loop thread:
/// fork all raw workers first.
#[no_mangle]
pub extern "C" fn rcluster_primary_fork_raw(
    primary: *mut rcluster_primary,
    worker_id: *mut u32,
    pid: *mut i32,
) -> c_int {
    guard(|| {
        let handle = PRIMARIES.get(primary)?;
        let result = handle.fork_raw();
        drop(handle);
        let (id, child_pid) = match result? {
            RawFork::Parent(info) => (info.id, info.pid),
            RawFork::Child => (crate::worker::worker_id().unwrap_or(0), 0),
        };
        write_optional(worker_id, id);
        write_optional(pid, child_pid);
        Ok(())
    })
}

/// Binds a listener on `host`:`port` up front (workers asking for that
/// address, or for the port stored in `*bound_port`, share it). `host` is an
/// IP address, "localhost", or "" for all IPv4 interfaces; port 0 lets the
/// OS pick (each worker's first port-0 listen at that host then shares it;
/// calling this again with port 0 returns the same port). `bound_port` may
/// be NULL. Errors: `RCLUSTER_E_ADDR` with errno.
#[no_mangle]
pub extern "C" fn rcluster_primary_listen(
    primary: *mut rcluster_primary,
    host: *const c_char,
    port: u16,
    bound_port: *mut u16,
) -> c_int {
    guard(|| {
        let primary = PRIMARIES.get(primary)?;
        let address = primary.listen(c_str(host, "host")?, port)?;
        write_optional(bound_port, address.port());
        Ok(())
    })
}

/// Stores in `*fd` an fd that is readable while events wait (for poll/epoll).
/// The primary owns it: do not close it or read from it.
#[no_mangle]
pub extern "C" fn rcluster_primary_fd(primary: *mut rcluster_primary, fd: *mut c_int) -> c_int {
    guard(|| {
        let out = non_null(fd, "fd")?;
        *out = PRIMARIES.get(primary)?.event_fd();
        Ok(())
    })
}

/// Takes the next event without waiting: 0 and `*event` filled, or
/// `RCLUSTER_E_AGAIN` when none waits.
#[no_mangle]
pub extern "C" fn rcluster_primary_next_event(primary: *mut rcluster_primary, event: *mut rcluster_event) -> c_int {
    rcluster_primary_wait_event(primary, event, 0)
}

/// Waits up to `timeout_ms` (negative: no limit; 0: don't wait) for the next
/// event: 0 and `*event` filled, `RCLUSTER_E_TIMEOUT` (or `RCLUSTER_E_AGAIN`
/// for 0) when none came.
#[no_mangle]
pub extern "C" fn rcluster_primary_wait_event(
    primary: *mut rcluster_primary,
    event: *mut rcluster_event,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        let out = non_null(event, "event")?;
        *out = empty_event();
        let primary = PRIMARIES.get(primary)?;
        match primary.next_event(crate::sys::timeout_from_ms(timeout_ms))? {
            Some(ev) => {
                *out = primary_event(ev);
                Ok(())
            }
            None if timeout_ms == 0 => Err(Error::new(Code::WouldBlock, "no event is waiting")),
            None => Err(Error::new(Code::Timeout, "no event arrived in time")),
        }
    })
}

/// Sends `len` bytes to worker `worker_id` (copied; queued, never blocks).
/// Messages queued for a worker before the primary's thread gets to them
/// travel together in shared records. `RCLUSTER_E_CLOSED` if that worker is
/// not connected.
#[no_mangle]
pub extern "C" fn rcluster_primary_send(
    primary: *mut rcluster_primary,
    worker_id: u32,
    data: *const c_void,
    len: usize,
) -> c_int {
    guard(|| {
        let primary = PRIMARIES.get(primary)?;
        primary.send(worker_id, bytes(data as *const u8, len, "data")?)
    })
}

/// Sends `count` messages to worker `worker_id`, in order: message `i` is
/// `lens[i]` bytes at `data[i]` (copied). They are packed into shared
/// records on the calling thread and handed to the primary's thread as one
/// command, so a batch costs about what one message costs; the worker still
/// sees each as its own message. Queued, never blocks. `RCLUSTER_E_CLOSED`
/// if that worker is not connected (then none is sent).
#[no_mangle]
pub extern "C" fn rcluster_primary_send_many(
    primary: *mut rcluster_primary,
    worker_id: u32,
    data: *const *const c_void,
    lens: *const usize,
    count: usize,
) -> c_int {
    guard(|| {
        let primary = PRIMARIES.get(primary)?;
        primary.send_many(worker_id, &message_list(data, lens, count)?)
    })
}

/// Asks worker `worker_id` to finish what it holds and leave: it gets no new
/// connections from now on; after the stop timeout it gets SIGTERM, then SIGKILL.
#[no_mangle]
pub extern "C" fn rcluster_primary_disconnect(primary: *mut rcluster_primary, worker_id: u32) -> c_int {
    guard(|| PRIMARIES.get(primary)?.disconnect(worker_id))
}

/// Sends `signal` to worker `worker_id`'s process (ignored once it has been reaped).
#[no_mangle]
pub extern "C" fn rcluster_primary_kill(primary: *mut rcluster_primary, worker_id: u32, signal: c_int) -> c_int {
    guard(|| PRIMARIES.get(primary)?.kill(worker_id, signal))
}

/// Starts a graceful shutdown and returns at once: connections the kernel
/// already accepted are handed out, listeners close, every worker is asked
/// to leave (SIGTERM after `grace_ms`, SIGKILL after another `grace_ms`).
/// A `RCLUSTER_EVENT_SHUTDOWN` event marks the end. Idempotent.
#[no_mangle]
pub extern "C" fn rcluster_primary_shutdown(primary: *mut rcluster_primary, grace_ms: u32) -> c_int {
    guard(|| PRIMARIES.get(primary)?.shutdown(duration_ms(grace_ms)))
}

/// Starts a zero-downtime rolling reload: slot by slot (`reload_concurrency`
/// at a time) a replacement worker starts, and once it is ready (listening,
/// or `rcluster_worker_ready` with `wait_ready`) the old one is asked to
/// leave gracefully. Listeners stay open throughout. Stores the generation
/// the new workers carry in `*generation` (may be NULL). Ends with
/// `RCLUSTER_EVENT_RELOAD_DONE` or `RCLUSTER_EVENT_RELOAD_FAILED`. A reload
/// asked for while one runs is run again after it.
#[no_mangle]
pub extern "C" fn rcluster_primary_reload(primary: *mut rcluster_primary, generation: *mut u32) -> c_int {
    guard(|| {
        let new = PRIMARIES.get(primary)?.reload()?;
        write_optional(generation, new);
        Ok(())
    })
}

/// Sets the number of worker slots: forks new workers (without extra
/// environment), or asks the newest ones to leave gracefully.
#[no_mangle]
pub extern "C" fn rcluster_primary_scale(primary: *mut rcluster_primary, workers: u32) -> c_int {
    guard(|| PRIMARIES.get(primary)?.scale(workers))
}

/// Fills `stats[0..capacity]` with the primary's workers, by id, and stores
/// how many there are in `*count` (which may exceed `capacity`: call again
/// with more room). `stats` may be NULL when `capacity` is 0.
#[no_mangle]
pub extern "C" fn rcluster_primary_stats(
    primary: *mut rcluster_primary,
    stats: *mut rcluster_worker_stats,
    capacity: usize,
    count: *mut usize,
) -> c_int {
    guard(|| {
        let count = non_null(count, "count")?;
        if capacity > 0 && stats.is_null() {
            return Err(Error::new(Code::InvalidArgument, format!("stats is NULL but capacity is {capacity}")));
        }
        let all = PRIMARIES.get(primary)?.stats()?;
        *count = all.len();
        for (i, w) in all.into_iter().take(capacity).enumerate() {
            let entry = rcluster_worker_stats {
                worker_id: w.id,
                pid: w.pid,
                slot: w.slot.map_or(-1, |s| s as i32),
                state: w.state as c_int,
                generation: w.generation,
                restarts: w.restarts,
                dispatched: w.dispatched,
                in_flight: w.in_flight,
                active: w.active,
                uptime_ms: w.uptime.as_millis() as u64,
            };
            // SAFETY: i < capacity and the caller promises room for `capacity` entries.
            unsafe { stats.add(i).write(entry) };
        }
        Ok(())
    })
}

/// Fills `*out` (its `struct_size` set by the caller) with the primary's
/// own numbers and its workers' totals, CPU time and memory read from
/// `/proc` now.
#[no_mangle]
pub extern "C" fn rcluster_primary_metrics(primary: *mut rcluster_primary, out: *mut rcluster_metrics) -> c_int {
    guard(|| {
        let m = PRIMARIES.get(primary)?.metrics()?;
        let p = &m.primary;
        let value = rcluster_metrics {
            struct_size: size_of::<rcluster_metrics>(),
            pending: p.pending,
            listeners: p.listeners,
            accept_pauses: p.accept_pauses,
            generation: p.generation,
            serving: p.serving as c_int,
            workers: m.workers.len() as u32,
            workers_listening: m.workers.iter().filter(|w| w.state == crate::WorkerState::Listening).count() as u32,
            cpu_ms: p.cpu.as_millis() as u64,
            rss_bytes: p.rss_bytes,
            workers_cpu_ms: m.workers.iter().map(|w| w.cpu.as_millis() as u64).sum(),
            workers_rss_bytes: m.workers.iter().map(|w| w.rss_bytes).sum(),
        };
        write_sized(out, value)
    })
}

/// Fills `*out` (its `struct_size` set by the caller) with worker
/// `worker_id`'s CPU time, memory and message counts.
/// `RCLUSTER_E_CLOSED` if the primary knows no such worker.
#[no_mangle]
pub extern "C" fn rcluster_primary_worker_usage(
    primary: *mut rcluster_primary,
    worker_id: u32,
    out: *mut rcluster_worker_usage,
) -> c_int {
    guard(|| {
        let m = PRIMARIES.get(primary)?.metrics()?;
        let w = m
            .workers
            .iter()
            .find(|w| w.id == worker_id)
            .ok_or_else(|| Error::new(Code::Closed, format!("no worker {worker_id}")))?;
        let value = rcluster_worker_usage {
            struct_size: size_of::<rcluster_worker_usage>(),
            cpu_ms: w.cpu.as_millis() as u64,
            rss_bytes: w.rss_bytes,
            messages_in: w.messages_in,
            messages_out: w.messages_out,
        };
        write_sized(out, value)
    })
}

/// Frees the primary. Threads waiting in `rcluster_primary_wait_event`
/// return `RCLUSTER_E_CLOSED` at once. If it has not shut down, it shuts
/// down with the stop timeout as grace, and this waits until every worker
/// has exited and been reaped (it may block that long). The handle is
/// invalid afterwards.
#[no_mangle]
pub extern "C" fn rcluster_primary_free(primary: *mut rcluster_primary) -> c_int {
    guard(|| {
        PRIMARIES.remove(primary)?.close();
        Ok(())
    })
}
