//! C ABI of the primary and of events.

use std::ffi::{c_char, c_int, c_void, CStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::sync::LazyLock;
use std::time::Duration;

use super::handles::Registry;
use super::{bytes, c_str, guard, message_list, non_null, write_optional};
use crate::error::{Code, Error, Result};
use crate::event::{Event, Exit, WorkerEvent};
use crate::primary::{Config, PolicyKind, Primary, RawFork};
use crate::tables::c::*;

pub(super) static PRIMARIES: LazyLock<Registry<Primary>> = LazyLock::new(|| Registry::new(1, "primary"));

/// A cluster's primary (opaque).
pub struct rcluster_primary {
    _private: [u8; 0],
}

/// No event (the struct after `rcluster_event_release`). Not a kind of the
/// table (`crate::tables`): `build.rs` writes it into the header beside them.
pub const RCLUSTER_EVENT_NONE: c_int = 0;

/// `flags` bit of an exit event: the worker had been asked to disconnect,
/// or left on purpose (Node's `exitedAfterDisconnect`).
pub const RCLUSTER_EXIT_AFTER_DISCONNECT: u32 = 1;

/// Settings of a primary. Fill with
/// `rcluster_primary_options_init2(&options, sizeof options)`, then change
/// what you need. Strings are copied by `rcluster_primary_new2`.
///
/// The struct grows at its end only. A program built against an older
/// header passes its smaller `struct_size`, and the library reads just those
/// fields and takes the defaults for the rest; a program built against a
/// newer header may run on an older library as long as it leaves the fields
/// that library does not know at their initial zero.
#[repr(C)]
pub struct rcluster_primary_options {
    /// The size of the caller's struct, set by `rcluster_primary_options_init2`.
    pub struct_size: usize,
    /// Worker program and arguments, a NULL-terminated array of strings;
    /// NULL (the default): this program with its own arguments, by the path
    /// it was started by (`argv[0]` when that is a path to it, symlinks kept),
    /// so a new file renamed there, or a switched `current` symlink, is what
    /// reloads and restarts run.
    pub argv: *const *const c_char,
    /// "KEY=VALUE" strings added to every worker's environment, NULL-terminated;
    /// NULL: none. Workers inherit this process's environment besides.
    pub env: *const *const c_char,
    /// Workers' working directory; NULL: inherit.
    pub cwd: *const c_char,
    /// `RCLUSTER_POLICY_RR` (default), `_SHARED`, `_REUSEPORT` or `_LEAST`.
    pub policy: c_int,
    /// Connections a worker may hold handed over but not yet acknowledged. Default 8.
    pub max_unacked: u32,
    /// Accepted connections the primary may queue before it stops accepting. Default 1024.
    pub max_pending: u32,
    /// listen(2) backlog of sockets the primary binds. Default 511.
    pub backlog: c_int,
    /// Time a worker asked to leave has before SIGTERM, and again before SIGKILL. Default 10000.
    pub stop_timeout_ms: u32,
    /// Nonzero: the library handles SIGTERM and SIGINT (graceful shutdown; a
    /// second one kills the workers), SIGHUP (rolling reload), SIGTTIN and
    /// SIGTTOU (one worker more or less, never fewer than one). Default 0:
    /// the library installs no handler. One primary per process may do this.
    pub handle_signals: c_int,
    /// Nonzero (default): each worker gets a process group of its own, so a
    /// terminal's Ctrl-C reaches the primary alone.
    pub own_process_group: c_int,
    /// Nonzero (default): a worker that exits without being asked is replaced.
    pub restart: c_int,
    /// First restart delay. Default 100.
    pub restart_delay_ms: u32,
    /// Longest restart delay. Default 10000.
    pub restart_delay_max_ms: u32,
    /// Each unexpected exit multiplies the delay by this. Default 2.0.
    pub restart_backoff: f64,
    /// A worker that ran this long resets the delay. Default 5000.
    pub stable_after_ms: u32,
    /// This many unexpected exits within `crash_loop_window_ms` stop a
    /// slot's restarts (`RCLUSTER_EVENT_CRASH_LOOP`). Default 5; 0: never.
    pub crash_loop_count: u32,
    /// Default 30000.
    pub crash_loop_window_ms: u32,
    /// Time a replacement (reload, recycling) has to become ready. Default 30000.
    pub ready_timeout_ms: u32,
    /// Nonzero: "ready" means the worker called `rcluster_worker_ready`, not
    /// that it listened (pm2's wait_ready). Default 0.
    pub wait_ready: c_int,
    /// Workers replaced at once in a rolling reload. Default 1.
    pub reload_concurrency: u32,
    /// Heartbeat period; 0 (default): no heartbeat.
    pub heartbeat_interval_ms: u32,
    /// A worker that has not answered a heartbeat for this long is killed
    /// and replaced (`RCLUSTER_EVENT_UNRESPONSIVE`). Default 30000. The worker
    /// answers whenever its host calls accept, an event call or listen, so
    /// set this above the longest time your loop spends elsewhere.
    pub heartbeat_timeout_ms: u32,
    /// Replace a worker gracefully after it was handed this many
    /// connections (rr); 0 (default): never.
    pub recycle_after: u32,
    /// Up to this many connections added at random to each worker's
    /// `recycle_after`, so they do not recycle together. Default 0.
    pub recycle_jitter: u32,
    /// A worker holding a handed-over connection unacknowledged this long is
    /// treated as hung: killed (`RCLUSTER_EVENT_UNRESPONSIVE`), its
    /// connections handed to other workers once it is reaped, its slot
    /// restarted. 0: no deadline. Default 30000.
    pub ack_timeout_ms: u32,
    /// Listeners workers' listen requests may have the primary bind, in
    /// all; past it a request for a new address fails with `EMFILE`. Default 1024.
    pub max_listeners: u32,
    /// Listeners one worker may hold. Default 64.
    pub max_listeners_per_worker: u32,
    /// A listener bound for workers that no live worker has used for this
    /// long is closed (listeners from `rcluster_primary_listen` stay). Default 60000.
    pub listener_idle_ms: u32,
    /// Bytes of messages queued for one worker that does not read them;
    /// past it `rcluster_primary_send` fails with `RCLUSTER_E_TOOBIG` and
    /// sends nothing. Default 64 MiB.
    pub max_send_queue: usize,
    /// Bytes of worker messages waiting for the host in the event queue;
    /// past it the primary stops reading workers' channels (nothing is
    /// dropped; they wait) until the host has taken half. Default 64 MiB.
    pub max_event_bytes: usize,
    /// Largest message a worker may send (at most, and by default,
    /// `RCLUSTER_MAX_MESSAGE`); a larger one cuts the worker off
    /// (`RCLUSTER_EVENT_WORKER_ERROR`).
    pub max_message: usize,
    /// Nonzero: allow a primary in a process started as a worker. Default
    /// 0: refused with `RCLUSTER_E_STATE`, since a program that forgets to
    /// check `rcluster_is_worker` would make every worker start workers.
    pub allow_nested: c_int,
    /// `"HOST:PORT"` to serve Prometheus metrics (`GET /metrics`) and a
    /// health check (`GET /healthz`: 200 only while the cluster serves) on,
    /// from a thread of their own; copied. NULL (default): no endpoint. An
    /// address in use fails `rcluster_primary_new2` with `RCLUSTER_E_ADDR`.
    pub metrics_address: *const c_char,
    /// Replace a worker gracefully once its resident memory passes this
    /// many MiB (checked every second), without dropping a connection.
    /// 0 (default): no limit.
    pub max_memory_mb: u32,
    /// File descriptors of worker messages waiting for the host in the
    /// event queue; past it the primary stops reading workers' channels
    /// until the host has taken half. 0 (default): 256.
    pub max_event_fds: usize,
    /// Nonzero: accept file descriptors attached to workers' messages
    /// (`rcluster_worker_send_fds`; see `rcluster_event_take_fd`). Default
    /// 0: a worker that attaches any is cut off
    /// (`RCLUSTER_EVENT_WORKER_ERROR`) and they are closed.
    pub accept_message_fds: c_int,
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
    /// (`rcluster_worker_done`); counted under `RCLUSTER_POLICY_LEAST` only, else 0.
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

/// An event. Fields that do not apply to its `kind` are zero. Release every
/// event with `rcluster_event_release` (it frees `data`).
#[repr(C)]
pub struct rcluster_event {
    /// `RCLUSTER_EVENT_*`.
    pub kind: c_int,
    /// The worker concerned (primary side), or this worker's id (worker side).
    pub worker_id: u32,
    /// The worker's pid.
    pub pid: i32,
    /// Exit events: the exit code, or -1 if a signal ended it or the status is unknown.
    pub exit_code: c_int,
    /// Exit events: the signal that ended it, or 0.
    pub signal: c_int,
    /// Exit events: `RCLUSTER_EXIT_AFTER_DISCONNECT`; message events:
    /// `RCLUSTER_MESSAGE_HAS_FDS`; future flags.
    pub flags: u32,
    /// Fork and crash-loop events: the worker's slot, or -1 (raw fork).
    pub slot: i32,
    /// Fork events: the worker's generation; reload events: the reload's.
    pub generation: u32,
    /// Listening events: the bound port.
    pub port: u16,
    /// Listening events: the bound IP address, NUL-terminated.
    pub address: [c_char; 64],
    /// Message bytes (or an error text), owned by the event; NULL when `len`
    /// is 0, unless file descriptors came with the message.
    pub data: *mut u8,
    /// Length of `data`.
    pub len: usize,
}

fn duration_ms(ms: u32) -> Duration {
    Duration::from_millis(ms as u64)
}

/// Reads a NULL-terminated array of C strings.
fn string_array(ptr: *const *const c_char, name: &str) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    if ptr.is_null() {
        return Ok(out);
    }
    for i in 0.. {
        if i > 1 << 20 {
            return Err(Error::new(Code::InvalidArgument, format!("{name} has no NULL terminator")));
        }
        // SAFETY: the caller promises a NULL-terminated array of valid C strings.
        let item = unsafe { *ptr.add(i) };
        if item.is_null() {
            break;
        }
        // SAFETY: as above.
        out.push(OsString::from_vec(unsafe { CStr::from_ptr(item) }.to_bytes().to_vec()));
    }
    Ok(out)
}

/// Splits "KEY=VALUE" strings.
fn env_pairs(ptr: *const *const c_char) -> Result<Vec<(OsString, OsString)>> {
    string_array(ptr, "env")?
        .into_iter()
        .map(|entry| {
            let bytes = entry.into_vec();
            let eq = bytes.iter().position(|&b| b == b'=').filter(|&i| i > 0).ok_or_else(|| {
                Error::new(
                    Code::InvalidArgument,
                    format!("env entry {:?} is not KEY=VALUE", String::from_utf8_lossy(&bytes)),
                )
            })?;
            Ok((OsString::from_vec(bytes[..eq].to_vec()), OsString::from_vec(bytes[eq + 1..].to_vec())))
        })
        .collect()
}

fn config_from(options: &rcluster_primary_options) -> Result<Config> {
    let mut config = Config::default();
    config.spawn.argv = string_array(options.argv, "argv")?;
    config.spawn.env = env_pairs(options.env)?;
    if !options.cwd.is_null() {
        config.spawn.cwd = Some(c_str(options.cwd, "cwd")?.into());
    }
    config.spawn.own_process_group = options.own_process_group != 0;
    config.policy = PolicyKind::from_raw(options.policy)?;
    config.max_unacked = options.max_unacked;
    config.max_pending = options.max_pending;
    config.backlog = options.backlog;
    config.stop_timeout = duration_ms(options.stop_timeout_ms);
    config.handle_signals = options.handle_signals != 0;
    let s = &mut config.supervision;
    s.restart = options.restart != 0;
    s.restart_delay = duration_ms(options.restart_delay_ms);
    s.restart_delay_max = duration_ms(options.restart_delay_max_ms);
    if !(options.restart_backoff.is_finite() && options.restart_backoff >= 1.0) {
        return Err(Error::new(Code::InvalidArgument, "restart_backoff must be a number >= 1"));
    }
    s.restart_backoff = options.restart_backoff;
    s.stable_after = duration_ms(options.stable_after_ms);
    s.crash_loop_count = options.crash_loop_count;
    s.crash_loop_window = duration_ms(options.crash_loop_window_ms);
    s.ready_timeout = duration_ms(options.ready_timeout_ms);
    s.wait_ready = options.wait_ready != 0;
    s.reload_concurrency = options.reload_concurrency.max(1);
    s.heartbeat_interval = (options.heartbeat_interval_ms > 0).then(|| duration_ms(options.heartbeat_interval_ms));
    s.heartbeat_timeout = duration_ms(options.heartbeat_timeout_ms);
    s.recycle_after = options.recycle_after as u64;
    s.recycle_jitter = options.recycle_jitter as u64;
    config.ack_timeout = (options.ack_timeout_ms > 0).then(|| duration_ms(options.ack_timeout_ms));
    let l = &mut config.limits;
    l.max_listeners = options.max_listeners;
    l.max_listeners_per_worker = options.max_listeners_per_worker;
    l.listener_idle = duration_ms(options.listener_idle_ms);
    l.max_send_queue = options.max_send_queue;
    l.max_event_bytes = options.max_event_bytes;
    l.max_message = options.max_message;
    if options.max_event_fds > 0 {
        l.max_event_fds = options.max_event_fds;
    }
    config.message_fds = options.accept_message_fds != 0;
    config.allow_nested = options.allow_nested != 0;
    config.supervision.max_memory = (options.max_memory_mb > 0).then(|| options.max_memory_mb as u64 * 1024 * 1024);
    if !options.metrics_address.is_null() {
        config.metrics_address = Some(c_str(options.metrics_address, "metrics_address")?.to_owned());
    }
    Ok(config)
}

/// The options struct of 0.1, which had no `struct_size`: its bytes are
/// those of `rcluster_primary_options` after that first field. Frozen.
const OPTIONS_V1_SIZE: usize = 160;
/// The first struct that carried its size (0.2, with `metrics_address` and
/// `max_memory_mb` at its end): the smallest size accepted. Fields added
/// later go after it, and sizes between it and ours are older headers.
const OPTIONS_MIN_SIZE: usize = size_of::<usize>() + OPTIONS_V1_SIZE + 16;
/// More than any header will ever declare; a larger size is garbage.
const OPTIONS_MAX_SIZE: usize = 1 << 16;
const _: () = assert!(std::mem::offset_of!(rcluster_primary_options, argv) == size_of::<usize>());
const _: () = assert!(std::mem::offset_of!(rcluster_primary_options, allow_nested) == size_of::<usize>() + 152);
const _: () = assert!(std::mem::offset_of!(rcluster_primary_options, max_event_fds) == OPTIONS_MIN_SIZE);
const _: () = assert!(size_of::<rcluster_primary_options>() == OPTIONS_MIN_SIZE + 16);

fn default_options() -> rcluster_primary_options {
    let d = Config::default();
    rcluster_primary_options {
        struct_size: size_of::<rcluster_primary_options>(),
        argv: std::ptr::null(),
        env: std::ptr::null(),
        cwd: std::ptr::null(),
        policy: d.policy as c_int,
        max_unacked: d.max_unacked,
        max_pending: d.max_pending,
        backlog: d.backlog,
        stop_timeout_ms: d.stop_timeout.as_millis() as u32,
        handle_signals: d.handle_signals as c_int,
        own_process_group: d.spawn.own_process_group as c_int,
        restart: d.supervision.restart as c_int,
        restart_delay_ms: d.supervision.restart_delay.as_millis() as u32,
        restart_delay_max_ms: d.supervision.restart_delay_max.as_millis() as u32,
        restart_backoff: d.supervision.restart_backoff,
        stable_after_ms: d.supervision.stable_after.as_millis() as u32,
        crash_loop_count: d.supervision.crash_loop_count,
        crash_loop_window_ms: d.supervision.crash_loop_window.as_millis() as u32,
        ready_timeout_ms: d.supervision.ready_timeout.as_millis() as u32,
        wait_ready: d.supervision.wait_ready as c_int,
        reload_concurrency: d.supervision.reload_concurrency,
        heartbeat_interval_ms: d.supervision.heartbeat_interval.map_or(0, |i| i.as_millis() as u32),
        heartbeat_timeout_ms: d.supervision.heartbeat_timeout.as_millis() as u32,
        recycle_after: d.supervision.recycle_after as u32,
        recycle_jitter: d.supervision.recycle_jitter as u32,
        ack_timeout_ms: d.ack_timeout.map_or(0, |t| t.as_millis() as u32),
        max_listeners: d.limits.max_listeners,
        max_listeners_per_worker: d.limits.max_listeners_per_worker,
        listener_idle_ms: d.limits.listener_idle.as_millis() as u32,
        max_send_queue: d.limits.max_send_queue,
        max_event_bytes: d.limits.max_event_bytes,
        max_message: d.limits.max_message,
        allow_nested: d.allow_nested as c_int,
        metrics_address: std::ptr::null(),
        max_memory_mb: 0,
        max_event_fds: d.limits.max_event_fds,
        accept_message_fds: d.message_fds as c_int,
    }
}

fn checked_size(size: usize) -> Result<usize> {
    if !(OPTIONS_MIN_SIZE..=OPTIONS_MAX_SIZE).contains(&size) {
        return Err(Error::new(
            Code::InvalidArgument,
            format!("options struct_size {size} is not a size of rcluster_primary_options: fill it with rcluster_primary_options_init2(&options, sizeof options)"),
        ));
    }
    Ok(size)
}

/// Fills the caller's `options`, of `struct_size` bytes (pass
/// `sizeof options`), with the defaults and records `struct_size` in it.
/// Bytes past the fields this library knows are zeroed.
#[no_mangle]
pub extern "C" fn rcluster_primary_options_init2(options: *mut rcluster_primary_options, struct_size: usize) -> c_int {
    guard(|| {
        // No reference to it: an older caller's struct is smaller than ours.
        if options.is_null() {
            return Err(Error::new(Code::InvalidArgument, "options is NULL"));
        }
        let size = checked_size(struct_size)?;
        let mut defaults = default_options();
        defaults.struct_size = size;
        let known = size.min(size_of::<rcluster_primary_options>());
        // SAFETY: the caller promises `struct_size` writable bytes at `options`;
        // we write at most that many, from a struct of plain integers and pointers.
        unsafe {
            let dst = options as *mut u8;
            std::ptr::write_bytes(dst, 0, size);
            std::ptr::copy_nonoverlapping(&defaults as *const _ as *const u8, dst, known);
        }
        Ok(())
    })
}

/// Reads the caller's options: the fields its `struct_size` covers, the
/// defaults for the rest.
///
/// # Safety
/// `options` points at `struct_size` readable bytes (its first field).
unsafe fn read_options(options: *const rcluster_primary_options) -> Result<rcluster_primary_options> {
    // SAFETY: every version of the struct starts with `struct_size`.
    let size = checked_size(unsafe { std::ptr::read_unaligned(options as *const usize) })?;
    let mut local = default_options();
    let known = size_of::<rcluster_primary_options>();
    let src = options as *const u8;
    // SAFETY: the caller's struct has `size` readable bytes; every field is a
    // plain integer, float or pointer, so any bytes are a valid value.
    unsafe {
        std::ptr::copy_nonoverlapping(src, &mut local as *mut _ as *mut u8, size.min(known));
        if size > known && std::slice::from_raw_parts(src.add(known), size - known).iter().any(|&b| b != 0) {
            return Err(Error::new(
                Code::InvalidArgument,
                format!(
                    "options set fields this library ({}) does not know: the program was built against a newer rcluster.h",
                    env!("CARGO_PKG_VERSION")
                ),
            ));
        }
    }
    local.struct_size = size;
    Ok(local)
}

/// Creates a primary with `options` (filled by
/// `rcluster_primary_options_init2`; NULL: the defaults) and stores its
/// handle in `*out`. No thread starts and no worker is spawned yet.
/// Free it with `rcluster_primary_free`.
#[no_mangle]
pub extern "C" fn rcluster_primary_new2(
    options: *const rcluster_primary_options,
    out: *mut *mut rcluster_primary,
) -> c_int {
    guard(|| {
        let out = non_null(out, "out")?;
        *out = std::ptr::null_mut();
        let config = if options.is_null() {
            Config::default()
        } else {
            // SAFETY: the caller promises a struct of its `struct_size`.
            config_from(&unsafe { read_options(options) }?)?
        };
        *out = PRIMARIES.insert(Primary::new(config)?);
        Ok(())
    })
}

/// 0.1's entry point, for programs built against its header (not in the
/// header any more): fills 0.1's options struct, which had no
/// `struct_size` and is laid out as `rcluster_primary_options` after it.
#[no_mangle]
pub extern "C" fn rcluster_primary_options_init(options: *mut c_void) -> c_int {
    guard(|| {
        if options.is_null() {
            return Err(Error::new(Code::InvalidArgument, "options is NULL"));
        }
        let options = options as *mut u8;
        let defaults = default_options();
        // SAFETY: a 0.1 caller's struct has OPTIONS_V1_SIZE bytes, which are
        // ours after `struct_size` (checked by the layout asserts above).
        unsafe {
            let src = (&defaults as *const rcluster_primary_options as *const u8).add(size_of::<usize>());
            std::ptr::copy_nonoverlapping(src, options, OPTIONS_V1_SIZE);
        }
        Ok(())
    })
}

/// 0.1's entry point, for programs built against its header (not in the
/// header any more): `rcluster_primary_new2` with 0.1's options struct.
#[no_mangle]
pub extern "C" fn rcluster_primary_new(options: *const c_void, out: *mut *mut rcluster_primary) -> c_int {
    if options.is_null() {
        return rcluster_primary_new2(std::ptr::null(), out);
    }
    let mut sized = default_options();
    // SAFETY: a 0.1 caller's struct has OPTIONS_V1_SIZE readable bytes of
    // plain fields, laid out as ours after `struct_size`.
    unsafe {
        let dst = (&mut sized as *mut rcluster_primary_options as *mut u8).add(size_of::<usize>());
        std::ptr::copy_nonoverlapping(options as *const u8, dst, OPTIONS_V1_SIZE);
    }
    // The fields 0.1 did not have keep the defaults `sized` was made with.
    sized.struct_size = size_of::<rcluster_primary_options>();
    rcluster_primary_new2(&sized, out)
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

/// Frees what an event owns (`data`, and the file descriptors of a message
/// the host did not take with `rcluster_event_take_fd`, which it closes) and
/// zeroes it. Safe to call twice and on a zeroed event.
#[no_mangle]
pub extern "C" fn rcluster_event_release(event: *mut rcluster_event) -> c_int {
    guard(|| {
        let event = non_null(event, "event")?;
        if super::messages::release(event) {
            // A message with fds: freed with its fd block.
        } else if !event.data.is_null() {
            // SAFETY: `data`/`len` came from Box::into_raw of a boxed slice in
            // `with_data` and are released once (zeroed just below).
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(event.data, event.len)) });
        }
        *event = empty_event();
        Ok(())
    })
}

pub(super) fn empty_event() -> rcluster_event {
    rcluster_event {
        kind: RCLUSTER_EVENT_NONE,
        worker_id: 0,
        pid: 0,
        exit_code: 0,
        signal: 0,
        flags: 0,
        slot: -1,
        generation: 0,
        port: 0,
        address: [0; 64],
        data: std::ptr::null_mut(),
        len: 0,
    }
}

pub(super) fn with_data(mut event: rcluster_event, data: Vec<u8>) -> rcluster_event {
    if !data.is_empty() {
        let boxed = data.into_boxed_slice();
        event.len = boxed.len();
        event.data = Box::into_raw(boxed) as *mut u8;
    }
    event
}

fn primary_event(event: Event) -> rcluster_event {
    let base = |kind, worker_id, pid| rcluster_event { kind, worker_id, pid, ..empty_event() };
    match event {
        Event::Fork { worker, pid, slot, generation } => {
            rcluster_event { slot: slot.map_or(-1, |s| s as i32), generation, ..base(RCLUSTER_EVENT_FORK, worker, pid) }
        }
        Event::Online { worker, pid } => base(RCLUSTER_EVENT_ONLINE, worker, pid),
        Event::Listening { worker, pid, address } => {
            let mut ev = base(RCLUSTER_EVENT_LISTENING, worker, pid);
            ev.port = address.port();
            for (dst, src) in ev.address.iter_mut().zip(address.ip().to_string().bytes().take(63)) {
                *dst = src as c_char;
            }
            ev
        }
        Event::Message { worker, pid, data, fds } => {
            super::messages::with_message(base(RCLUSTER_EVENT_MESSAGE, worker, pid), data, fds)
        }
        Event::Disconnect { worker, pid } => base(RCLUSTER_EVENT_DISCONNECT, worker, pid),
        Event::Exit { worker, pid, exit, after_disconnect, .. } => {
            let mut ev = base(RCLUSTER_EVENT_EXIT, worker, pid);
            (ev.exit_code, ev.signal) = match exit {
                Exit::Code(code) => (code, 0),
                Exit::Signal(signal) => (-1, signal),
                Exit::Unknown => (-1, 0),
            };
            ev.flags = if after_disconnect { RCLUSTER_EXIT_AFTER_DISCONNECT } else { 0 };
            ev
        }
        Event::WorkerError { worker, pid, message } => {
            with_data(base(RCLUSTER_EVENT_WORKER_ERROR, worker, pid), message.into_bytes())
        }
        Event::CrashLoop { slot, worker, pid } => {
            rcluster_event { slot: slot as i32, ..base(RCLUSTER_EVENT_CRASH_LOOP, worker, pid) }
        }
        Event::Unresponsive { worker, pid } => base(RCLUSTER_EVENT_UNRESPONSIVE, worker, pid),
        Event::SpawnFailed { slot, message } => with_data(
            rcluster_event { slot: slot as i32, ..base(RCLUSTER_EVENT_SPAWN_FAILED, 0, 0) },
            message.into_bytes(),
        ),
        Event::ReloadDone { generation } => rcluster_event { generation, ..base(RCLUSTER_EVENT_RELOAD_DONE, 0, 0) },
        Event::ReloadFailed { generation, message } => {
            with_data(rcluster_event { generation, ..base(RCLUSTER_EVENT_RELOAD_FAILED, 0, 0) }, message.into_bytes())
        }
        Event::Upgraded { pid } => base(RCLUSTER_EVENT_UPGRADED, 0, pid),
        Event::UpgradeFailed { message } => with_data(base(RCLUSTER_EVENT_UPGRADE_FAILED, 0, 0), message.into_bytes()),
        Event::Shutdown => base(RCLUSTER_EVENT_SHUTDOWN, 0, 0),
    }
}

pub(super) fn worker_event(event: WorkerEvent, worker_id: u32, pid: i32) -> rcluster_event {
    let base = |kind| rcluster_event { kind, worker_id, pid, ..empty_event() };
    match event {
        WorkerEvent::Message { data, fds } => super::messages::with_message(base(RCLUSTER_EVENT_MESSAGE), data, fds),
        WorkerEvent::Disconnect => base(RCLUSTER_EVENT_DISCONNECT),
        WorkerEvent::PrimaryGone => base(RCLUSTER_EVENT_PRIMARY_GONE),
    }
}
