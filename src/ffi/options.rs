//! C ABI of a primary's settings: the `rcluster_primary_options` struct, its
//! defaults and sizes (older headers pass smaller structs), and creating a
//! primary from it (`rcluster_primary_new2`, and 0.1's entry points).

use std::ffi::{c_char, c_int, c_void, CStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use super::{c_str, guard, non_null};
use crate::error::{Code, Error, Result};
use crate::primary::{Config, PolicyKind, Primary};

use super::primary::{rcluster_primary, PRIMARIES};

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

pub(super) fn duration_ms(ms: u32) -> Duration {
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
pub(super) fn env_pairs(ptr: *const *const c_char) -> Result<Vec<(OsString, OsString)>> {
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
