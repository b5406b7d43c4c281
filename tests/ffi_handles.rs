//! Every exported function, called with NULL pointers and bogus, stale or
//! wrong-type handles, returns an error code and never crashes.

mod common;
use common::*;

use std::ffi::{c_char, c_void};
use std::ptr::{null, null_mut};

/// The functions this test calls; checked against the header below so a new
/// function cannot be exported without being covered here.
const COVERED: &[&str] = &[
    "rcluster_last_error",
    "rcluster_last_errno",
    "rcluster_strerror",
    "rcluster_event_name",
    "rcluster_version",
    "rcluster_socketpair",
    "rcluster_send_handle",
    "rcluster_recv_handle",
    "rcluster_buffer_free",
    "rcluster_primary_options_init2",
    "rcluster_primary_new2",
    "rcluster_primary_fork",
    "rcluster_primary_fork_raw",
    "rcluster_primary_listen",
    "rcluster_primary_fd",
    "rcluster_primary_next_event",
    "rcluster_primary_wait_event",
    "rcluster_primary_send",
    "rcluster_primary_send_many",
    "rcluster_primary_disconnect",
    "rcluster_primary_kill",
    "rcluster_primary_shutdown",
    "rcluster_primary_reload",
    "rcluster_primary_scale",
    "rcluster_primary_stats",
    "rcluster_primary_free",
    "rcluster_event_release",
    "rcluster_is_worker",
    "rcluster_worker_id",
    "rcluster_worker_open",
    "rcluster_worker_fd",
    "rcluster_worker_listen",
    "rcluster_listener_port",
    "rcluster_listener_address",
    "rcluster_listener_fd",
    "rcluster_listener_accept",
    "rcluster_listener_accept_many",
    "rcluster_listener_close",
    "rcluster_worker_next_event",
    "rcluster_worker_wait_event",
    "rcluster_worker_ready",
    "rcluster_worker_done",
    "rcluster_worker_reports_done",
    "rcluster_worker_send",
    "rcluster_worker_send_many",
    "rcluster_worker_close",
    "rcluster_primary_metrics",
    "rcluster_primary_worker_usage",
    "rcluster_primary_send_fds",
    "rcluster_worker_send_fds",
    "rcluster_event_fd_count",
    "rcluster_event_take_fd",
];

#[test]
fn every_exported_function_is_covered_here() {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/rcluster.h")).unwrap();
    let exported: Vec<&str> = header
        .lines()
        .filter_map(|line| {
            let name = line.split('(').next()?.rsplit([' ', '*']).next()?;
            (line.contains('(') && name.starts_with("rcluster_") && !line.trim_start().starts_with("//"))
                .then_some(name)
        })
        .collect();
    assert!(exported.len() >= COVERED.len() - 1, "parsed {exported:?}");
    for name in &exported {
        assert!(COVERED.contains(name), "{name} is exported but not covered by this test");
    }
}

fn bogus<T>(n: usize) -> *mut T {
    n as *mut T
}

fn expect(rc: i32, code: i32, what: &str) {
    assert_eq!(rc, code, "{what}: {}", last_error());
    assert!(!last_error().is_empty(), "{what} sets a message");
}

#[test]
fn primary_functions_refuse_null_and_bogus_handles() {
    let handles: [*mut rcluster_primary; 4] = [null_mut(), bogus(0x1234_5671), bogus(0xdead_bee0), bogus(usize::MAX)];
    let mut ev = empty_event();
    let host = c"127.0.0.1".as_ptr();
    for h in handles {
        expect(rcluster_primary_fork(h, null(), null_mut(), null_mut()), RCLUSTER_E_HANDLE, "fork");
        expect(rcluster_primary_fork_raw(h, null_mut(), null_mut()), RCLUSTER_E_HANDLE, "fork_raw");
        expect(rcluster_primary_listen(h, host, 0, null_mut()), RCLUSTER_E_HANDLE, "listen");
        let mut fd = 0;
        expect(rcluster_primary_fd(h, &mut fd), RCLUSTER_E_HANDLE, "fd");
        expect(rcluster_primary_next_event(h, &mut ev), RCLUSTER_E_HANDLE, "next_event");
        expect(rcluster_primary_wait_event(h, &mut ev, 10), RCLUSTER_E_HANDLE, "wait_event");
        expect(rcluster_primary_send(h, 1, b"x".as_ptr() as *const c_void, 1), RCLUSTER_E_HANDLE, "send");
        expect(rcluster_primary_send_many(h, 1, null(), null(), 2), RCLUSTER_E_HANDLE, "send_many");
        expect(rcluster_primary_send_fds(h, 1, null(), 0, null(), 0), RCLUSTER_E_HANDLE, "send_fds");
        expect(rcluster_primary_disconnect(h, 1), RCLUSTER_E_HANDLE, "disconnect");
        expect(rcluster_primary_kill(h, 1, 15), RCLUSTER_E_HANDLE, "kill");
        expect(rcluster_primary_shutdown(h, 10), RCLUSTER_E_HANDLE, "shutdown");
        expect(rcluster_primary_reload(h, null_mut()), RCLUSTER_E_HANDLE, "reload");
        expect(rcluster_primary_scale(h, 2), RCLUSTER_E_HANDLE, "scale");
        let mut count = 0usize;
        expect(rcluster_primary_stats(h, null_mut(), 0, &mut count), RCLUSTER_E_HANDLE, "stats");
        let mut metrics: rcluster_metrics = unsafe { std::mem::zeroed() };
        metrics.struct_size = size_of::<rcluster_metrics>();
        expect(rcluster_primary_metrics(h, &mut metrics), RCLUSTER_E_HANDLE, "metrics");
        let mut usage: rcluster_worker_usage = unsafe { std::mem::zeroed() };
        usage.struct_size = size_of::<rcluster_worker_usage>();
        expect(rcluster_primary_worker_usage(h, 1, &mut usage), RCLUSTER_E_HANDLE, "worker_usage");
        expect(rcluster_primary_free(h), RCLUSTER_E_HANDLE, "free");
    }
    expect(
        rcluster_primary_options_init2(null_mut(), size_of::<rcluster_primary_options>()),
        RCLUSTER_E_INVAL,
        "options_init(NULL)",
    );
    expect(rcluster_primary_new2(null(), null_mut()), RCLUSTER_E_INVAL, "new(out=NULL)");
    expect(rcluster_event_release(null_mut()), RCLUSTER_E_INVAL, "event_release(NULL)");
    let mut count = 7usize;
    expect(rcluster_event_fd_count(null(), &mut count), RCLUSTER_E_INVAL, "event_fd_count(NULL)");
    ok(rcluster_event_fd_count(&ev, &mut count), "event_fd_count(no fds)");
    assert_eq!(count, 0);
    let mut fd = 0;
    expect(rcluster_event_take_fd(null_mut(), 0, &mut fd), RCLUSTER_E_INVAL, "event_take_fd(NULL)");
    expect(rcluster_event_take_fd(&mut ev, 0, &mut fd), RCLUSTER_E_INVAL, "event_take_fd(no fds)");
}

#[test]
fn stale_and_wrong_type_handles_are_refused() {
    let _serial = serial();
    let mut p = null_mut();
    ok(rcluster_primary_new2(null(), &mut p), "new");
    // A primary handle where a worker or listener handle is expected.
    let mut fd = 0;
    expect(rcluster_worker_fd(p as *mut rcluster_worker, &mut fd), RCLUSTER_E_HANDLE, "worker_fd(primary handle)");
    expect(
        rcluster_listener_fd(p as *mut rcluster_listener, &mut fd),
        RCLUSTER_E_HANDLE,
        "listener_fd(primary handle)",
    );
    // Bad arguments on a live handle.
    expect(rcluster_primary_fd(p, null_mut()), RCLUSTER_E_INVAL, "fd(NULL)");
    expect(rcluster_primary_next_event(p, null_mut()), RCLUSTER_E_INVAL, "next_event(NULL)");
    expect(rcluster_primary_listen(p, null(), 0, null_mut()), RCLUSTER_E_INVAL, "listen(host NULL)");
    expect(rcluster_primary_listen(p, c"nope".as_ptr(), 0, null_mut()), RCLUSTER_E_ADDR, "listen(bad host)");
    expect(rcluster_primary_send(p, 1, null(), 5), RCLUSTER_E_INVAL, "send(NULL data, len 5)");
    expect(rcluster_primary_send_many(p, 1, null(), null(), 2), RCLUSTER_E_INVAL, "send_many(NULL arrays)");
    let (one, lens) = ([null::<c_void>()], [3usize]);
    expect(
        rcluster_primary_send_many(p, 1, one.as_ptr(), lens.as_ptr(), 1),
        RCLUSTER_E_INVAL,
        "send_many(NULL data[0])",
    );
    let (one, lens) = ([b"x".as_ptr() as *const c_void], [1usize]);
    expect(
        rcluster_primary_send_many(p, 99, one.as_ptr(), lens.as_ptr(), 1),
        RCLUSTER_E_CLOSED,
        "send_many(no such worker)",
    );
    expect(rcluster_primary_kill(p, 1, 0), RCLUSTER_E_INVAL, "kill(signal 0)");
    let mut count = 0usize;
    expect(rcluster_primary_stats(p, null_mut(), 3, &mut count), RCLUSTER_E_INVAL, "stats(NULL, capacity 3)");
    expect(rcluster_primary_stats(p, null_mut(), 0, null_mut()), RCLUSTER_E_INVAL, "stats(count NULL)");
    let bad_env: [*const c_char; 2] = [c"NOEQUALS".as_ptr(), null()];
    expect(rcluster_primary_fork(p, bad_env.as_ptr(), null_mut(), null_mut()), RCLUSTER_E_INVAL, "fork(bad env)");
    // The test harness has threads: raw fork is refused with a clear error.
    expect(rcluster_primary_fork_raw(p, null_mut(), null_mut()), RCLUSTER_E_STATE, "fork_raw with threads");
    assert!(last_error().contains("threads"), "{}", last_error());
    ok(rcluster_primary_free(p), "free");
    // Now stale.
    expect(rcluster_primary_fd(p, &mut fd), RCLUSTER_E_HANDLE, "fd(stale)");
    expect(rcluster_primary_free(p), RCLUSTER_E_HANDLE, "free twice");
    let mut bad_opts: rcluster_primary_options = unsafe { std::mem::zeroed() };
    ok(rcluster_primary_options_init2(&mut bad_opts, size_of::<rcluster_primary_options>()), "options_init");
    bad_opts.policy = 77;
    expect(rcluster_primary_new2(&bad_opts, &mut p), RCLUSTER_E_INVAL, "new(bad policy)");
    bad_opts.policy = RCLUSTER_POLICY_RR;
    bad_opts.restart_backoff = f64::NAN;
    expect(rcluster_primary_new2(&bad_opts, &mut p), RCLUSTER_E_INVAL, "new(NaN backoff)");
    assert!(p.is_null(), "no handle on failure");
    // 0.1's entry points (not in the header) refuse NULL the same way.
    expect(rcluster_primary_options_init(null_mut()), RCLUSTER_E_INVAL, "options_init v1(NULL)");
    expect(rcluster_primary_new(null(), null_mut()), RCLUSTER_E_INVAL, "new v1(out=NULL)");
}

/// The options struct carries its size: an older caller's smaller struct
/// gets the defaults for the fields it lacks; a newer caller's larger one is
/// accepted while the fields this library does not know are left zero.
#[test]
fn options_struct_size_is_checked_and_a_newer_struct_must_leave_unknown_fields_zero() {
    let _serial = serial();
    const SIZE: usize = size_of::<rcluster_primary_options>();
    let mut p = null_mut();
    let mut opts: rcluster_primary_options = unsafe { std::mem::zeroed() };
    // 0.2's struct ended before max_event_fds; a smaller size is not a struct.
    let smallest = std::mem::offset_of!(rcluster_primary_options, max_event_fds);
    for bad in [0, 8, smallest - 1, 1 << 20] {
        expect(rcluster_primary_options_init2(&mut opts, bad), RCLUSTER_E_INVAL, "init2(bad size)");
    }
    ok(rcluster_primary_options_init2(&mut opts, SIZE), "init2");
    assert_eq!(opts.struct_size, SIZE);
    assert_eq!(opts.max_unacked, 8, "defaults filled");
    opts.struct_size = 3;
    expect(rcluster_primary_new2(&opts, &mut p), RCLUSTER_E_INVAL, "new2(garbage struct_size)");
    assert!(last_error().contains("rcluster_primary_options_init2"), "{}", last_error());

    // A program built against 0.2's header: its struct ends before the fd fields.
    let mut older: rcluster_primary_options = unsafe { std::mem::zeroed() };
    older.accept_message_fds = 7;
    ok(rcluster_primary_options_init2(&mut older, smallest), "init2(0.2 size)");
    assert_eq!(older.accept_message_fds, 7, "init2 writes nothing past the caller's size");
    older.accept_message_fds = 0;
    ok(rcluster_primary_new2(&older, &mut p), "new2(0.2 size)");
    ok(rcluster_primary_free(p), "free");
    p = null_mut();

    // A program built against a newer header: 32 more bytes.
    #[repr(C)]
    struct Newer {
        base: rcluster_primary_options,
        extra: [u64; 4],
    }
    let mut newer: Newer = unsafe { std::mem::zeroed() };
    newer.extra = [7; 4];
    ok(rcluster_primary_options_init2(&mut newer.base, size_of::<Newer>()), "init2(newer)");
    assert_eq!(newer.extra, [0; 4], "fields it does not know are zeroed");
    assert_eq!(newer.base.struct_size, size_of::<Newer>());
    ok(rcluster_primary_new2(&newer.base, &mut p), "new2(newer, unknown fields zero)");
    ok(rcluster_primary_free(p), "free");
    p = null_mut();
    newer.extra[3] = 1;
    expect(rcluster_primary_new2(&newer.base, &mut p), RCLUSTER_E_INVAL, "new2(newer, unknown field set)");
    assert!(last_error().contains("newer rcluster.h"), "{}", last_error());
    assert!(p.is_null());
}

#[test]
fn worker_functions_refuse_null_and_bogus_handles_and_non_workers() {
    let mut ev = empty_event();
    let mut fd = 0;
    let mut port = 0u16;
    let mut id = 0u32;
    assert_eq!(rcluster_is_worker(), 0);
    expect(rcluster_worker_id(&mut id), RCLUSTER_E_STATE, "worker_id in a non-worker");
    expect(rcluster_worker_id(null_mut()), RCLUSTER_E_INVAL, "worker_id(NULL)");
    let mut w = null_mut();
    expect(rcluster_worker_open(&mut w), RCLUSTER_E_STATE, "worker_open in a non-worker");
    expect(rcluster_worker_open(null_mut()), RCLUSTER_E_INVAL, "worker_open(NULL)");
    for h in [null_mut(), bogus::<rcluster_worker>(0x4242_4242), bogus(0x10)] {
        let mut l = null_mut();
        expect(rcluster_worker_fd(h, &mut fd), RCLUSTER_E_HANDLE, "worker_fd");
        expect(rcluster_worker_listen(h, c"127.0.0.1".as_ptr(), 0, 10, &mut l), RCLUSTER_E_HANDLE, "worker_listen");
        expect(rcluster_worker_next_event(h, &mut ev), RCLUSTER_E_HANDLE, "worker_next_event");
        expect(rcluster_worker_wait_event(h, &mut ev, 10), RCLUSTER_E_HANDLE, "worker_wait_event");
        expect(rcluster_worker_send(h, b"x".as_ptr() as *const c_void, 1), RCLUSTER_E_HANDLE, "worker_send");
        expect(rcluster_worker_ready(h), RCLUSTER_E_HANDLE, "worker_ready");
        expect(rcluster_worker_send_many(h, null(), null(), 2), RCLUSTER_E_HANDLE, "worker_send_many");
        expect(rcluster_worker_send_fds(h, null(), 0, null(), 0), RCLUSTER_E_HANDLE, "worker_send_fds");
        expect(rcluster_worker_done(h, 1), RCLUSTER_E_HANDLE, "worker_done");
        let mut reports = -1;
        expect(rcluster_worker_reports_done(h, &mut reports), RCLUSTER_E_HANDLE, "worker_reports_done");
        assert_eq!(reports, -1, "worker_reports_done wrote through a bad handle");
        expect(rcluster_worker_close(h), RCLUSTER_E_HANDLE, "worker_close");
    }
    for h in [null_mut(), bogus::<rcluster_listener>(0x4242_4243), bogus(0x13)] {
        expect(rcluster_listener_port(h, &mut port), RCLUSTER_E_HANDLE, "listener_port");
        let mut buf = [0 as c_char; 64];
        expect(
            rcluster_listener_address(h, buf.as_mut_ptr(), buf.len(), &mut port),
            RCLUSTER_E_HANDLE,
            "listener_address",
        );
        expect(rcluster_listener_address(h, null_mut(), 0, &mut port), RCLUSTER_E_INVAL, "listener_address(NULL buf)");
        expect(rcluster_listener_fd(h, &mut fd), RCLUSTER_E_HANDLE, "listener_fd");
        expect(rcluster_listener_accept(h, 0, &mut fd), RCLUSTER_E_HANDLE, "listener_accept");
        assert_eq!(fd, -1, "accept stores -1 on failure");
        let (mut batch, mut count) = ([-1; 4], 7usize);
        expect(
            rcluster_listener_accept_many(h, 0, batch.as_mut_ptr(), batch.len(), &mut count),
            RCLUSTER_E_HANDLE,
            "listener_accept_many",
        );
        assert_eq!(count, 0, "accept_many stores 0 on failure");
        expect(
            rcluster_listener_accept_many(h, 0, null_mut(), 4, &mut count),
            RCLUSTER_E_INVAL,
            "accept_many(NULL fds)",
        );
        expect(
            rcluster_listener_accept_many(h, 0, batch.as_mut_ptr(), 0, &mut count),
            RCLUSTER_E_INVAL,
            "accept_many(0)",
        );
        expect(
            rcluster_listener_accept_many(h, 0, batch.as_mut_ptr(), 4, null_mut()),
            RCLUSTER_E_INVAL,
            "accept_many(NULL count)",
        );
        expect(rcluster_listener_close(h), RCLUSTER_E_HANDLE, "listener_close");
    }
}

#[test]
fn plain_functions_behave_with_odd_input() {
    let mut fds = [0; 2];
    expect(rcluster_socketpair(null_mut()), RCLUSTER_E_INVAL, "socketpair(NULL)");
    ok(rcluster_socketpair(fds.as_mut_ptr()), "socketpair");
    let (mut data, mut len, mut nfds) = (null_mut(), 0usize, 0usize);
    expect(
        rcluster_recv_handle(fds[0], &mut data, null_mut(), null_mut(), 0, &mut nfds, 0),
        RCLUSTER_E_INVAL,
        "recv(len NULL)",
    );
    expect(
        rcluster_recv_handle(fds[0], &mut data, &mut len, null_mut(), 3, &mut nfds, 0),
        RCLUSTER_E_INVAL,
        "recv(fds NULL, max 3)",
    );
    expect(rcluster_send_handle(fds[0], null(), 3, null(), 0, 0), RCLUSTER_E_INVAL, "send(NULL data, len 3)");
    expect(rcluster_send_handle(fds[0], null(), 0, null(), 2, 0), RCLUSTER_E_INVAL, "send(NULL fds, nfds 2)");
    ok(rcluster_buffer_free(null_mut(), 0), "buffer_free(NULL)");
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    for code in [0, -1, -5, -12, -13, -99, 7] {
        assert!(!rcluster_strerror(code).is_null());
    }
    for kind in [i32::MIN, -1, 0, 1, 16, 99, i32::MAX] {
        assert!(!rcluster_event_name(kind).is_null());
    }
    assert!(!rcluster_version().is_null());
    let _ = rcluster_last_errno();
    let mut ev = empty_event();
    ok(rcluster_event_release(&mut ev), "release of an empty event");
    ok(rcluster_event_release(&mut ev), "release twice");
}
