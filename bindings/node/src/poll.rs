//! Readiness of an fd, watched by the JS thread's own event loop (Node only).
//!
//! The library's objects each expose an fd that is readable when they have
//! something (a connection, an event). Under Node, a libuv poll handle on
//! that fd calls back into JS on the JS thread itself: no helper thread, no
//! threadsafe-function hop, no wake-up of a second thread per connection.
//! JS then takes what is ready with a synchronous call (`acceptMany`,
//! `nextEvent`).
//!
//! Node exports libuv to addons (its documented addon ABI), but Bun and Deno
//! do not implement it (Bun's `uv_*` symbols exist and abort), so the
//! binding's JS uses this only under Node and keeps the threaded path
//! elsewhere. The libuv functions are looked up at run time with `dlsym`,
//! so the addon still loads where they are missing.

use std::ffi::{c_int, c_void, CStr};
use std::ptr::null_mut;
use std::sync::OnceLock;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;

/// `UV_POLL` in libuv's `uv_handle_type` (stable across libuv 1.x).
const UV_POLL: c_int = 8;
/// `UV_READABLE` in libuv's `uv_poll_event`.
const UV_READABLE: c_int = 1;

type PollCb = unsafe extern "C" fn(handle: *mut c_void, status: c_int, events: c_int);
type CloseCb = unsafe extern "C" fn(handle: *mut c_void);

/// The libuv functions this module calls, from the host process.
struct Uv {
    handle_size: unsafe extern "C" fn(c_int) -> usize,
    poll_init: unsafe extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int,
    poll_start: unsafe extern "C" fn(*mut c_void, c_int, PollCb) -> c_int,
    poll_stop: unsafe extern "C" fn(*mut c_void) -> c_int,
    close: unsafe extern "C" fn(*mut c_void, CloseCb),
    unref: unsafe extern "C" fn(*mut c_void),
    strerror: unsafe extern "C" fn(c_int) -> *const std::ffi::c_char,
}

fn uv() -> Option<&'static Uv> {
    static UV: OnceLock<Option<Uv>> = OnceLock::new();
    UV.get_or_init(|| {
        /// The address of `name` in the process, as a function pointer of type `T`.
        fn sym<T: Copy>(name: &CStr) -> Option<T> {
            // SAFETY: dlsym with a NUL-terminated name only reads it.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            // SAFETY: T is always one of the function pointer types above
            // (pointer-sized), matching libuv's declarations of `name`.
            (!p.is_null()).then(|| unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
        }
        Some(Uv {
            handle_size: sym(c"uv_handle_size")?,
            poll_init: sym(c"uv_poll_init")?,
            poll_start: sym(c"uv_poll_start")?,
            poll_stop: sym(c"uv_poll_stop")?,
            close: sym(c"uv_close")?,
            unref: sym(c"uv_unref")?,
            strerror: sym(c"uv_strerror")?,
        })
    })
    .as_ref()
}

/// Whether this process offers libuv to addons (true under Node).
pub fn libuv_available() -> bool {
    uv().is_some()
}

fn uv_error(uv: &Uv, what: &str, code: c_int) -> Error {
    // SAFETY: uv_strerror returns a static NUL-terminated string for any code.
    let text = unsafe { CStr::from_ptr((uv.strerror)(code)) }.to_string_lossy();
    Error::from_reason(format!("{what}: {text}"))
}

/// What the poll handle's `data` points to. Freed in the close callback,
/// after libuv is done with the handle.
struct PollState {
    env: sys::napi_env,
    callback: sys::napi_ref,
    context: sys::napi_async_context,
    /// The `uv_poll_t` (libuv's size, from `uv_handle_size`), malloc'ed.
    handle: *mut c_void,
    uv: &'static Uv,
    /// Started and not stopped (by `stop`, or by libuv after an error).
    active: bool,
}

/// Calls `callback()` on the JS thread whenever `fd` is readable, while
/// started. The handle never keeps the event loop alive (the JS side holds
/// what does). `close()` releases it; a closed poll cannot restart.
#[napi]
pub struct NativePoll {
    /// Null once closed.
    state: *mut PollState,
}

#[napi]
impl NativePoll {
    #[napi(constructor)]
    pub fn new(env: Env, fd: i32, callback: Function<'_, i32, ()>) -> Result<NativePoll> {
        let uv = uv().ok_or_else(|| Error::from_reason("this runtime does not offer libuv to addons"))?;
        let raw_env = env.raw();
        let mut uv_loop = null_mut();
        // SAFETY: a valid env from this call; `uv_loop` is an out-pointer.
        check(unsafe { sys::napi_get_uv_event_loop(raw_env, &mut uv_loop) }, "napi_get_uv_event_loop")?;
        // SAFETY: uv_handle_size is a pure function of the type.
        let size = unsafe { (uv.handle_size)(UV_POLL) };
        // SAFETY: plain allocation, checked below; zeroed so `data` starts null.
        let handle = unsafe { libc::calloc(1, size) };
        if handle.is_null() {
            return Err(Error::from_reason("out of memory for a poll handle"));
        }
        // SAFETY: `handle` is a zeroed uv_poll_t-sized block, `uv_loop` the
        // JS thread's loop; libuv checks the fd.
        let rc = unsafe { (uv.poll_init)(uv_loop as *mut c_void, handle, fd) };
        if rc != 0 {
            // SAFETY: a failed init leaves the handle unregistered: ours to free.
            unsafe { libc::free(handle) };
            return Err(uv_error(uv, &format!("uv_poll_init on fd {fd}"), rc));
        }
        let mut state =
            Box::new(PollState { env: raw_env, callback: null_mut(), context: null_mut(), handle, uv, active: false });
        // SAFETY: valid env and values from this call; out-pointers into `state`.
        let setup = unsafe {
            check(sys::napi_create_reference(raw_env, callback.raw(), 1, &mut state.callback), "napi_create_reference")
                .and_then(|_| {
                    let mut name = null_mut();
                    check(
                        sys::napi_create_string_utf8(raw_env, c"rcluster.poll".as_ptr(), 13, &mut name),
                        "napi_create_string_utf8",
                    )?;
                    check(sys::napi_async_init(raw_env, null_mut(), name, &mut state.context), "napi_async_init")
                })
        };
        let state = Box::into_raw(state);
        // SAFETY: the handle's first field is libuv's `void *data` (UV_HANDLE_FIELDS);
        // it points at the state until the close callback frees both.
        unsafe {
            *(handle as *mut *mut PollState) = state;
            (uv.unref)(handle);
        }
        let mut poll = NativePoll { state };
        if let Err(e) = setup {
            poll.close();
            return Err(e);
        }
        Ok(poll)
    }

    /// Starts calling back on readability (idempotent).
    #[napi]
    pub fn start(&mut self) -> Result<()> {
        if self.state.is_null() {
            return Err(Error::from_reason("the poll is closed"));
        }
        // SAFETY: state is live until close (only this thread touches it).
        let state = unsafe { &mut *self.state };
        if state.active {
            return Ok(());
        }
        // SAFETY: an initialized, open uv_poll_t on the loop of this thread.
        let rc = unsafe { (state.uv.poll_start)(state.handle, UV_READABLE, on_readable) };
        if rc != 0 {
            return Err(uv_error(state.uv, "uv_poll_start", rc));
        }
        state.active = true;
        Ok(())
    }

    /// Stops calling back until `start` (idempotent).
    #[napi]
    pub fn stop(&mut self) {
        if self.state.is_null() {
            return;
        }
        // SAFETY: state is live until close (only this thread touches it).
        let state = unsafe { &mut *self.state };
        if !state.active {
            return;
        }
        // SAFETY: an initialized, open uv_poll_t.
        unsafe { (state.uv.poll_stop)(state.handle) };
        state.active = false;
    }

    /// Releases the handle (idempotent). Safe from inside the callback: the
    /// memory is freed by libuv's close callback, after the current one returns.
    #[napi]
    pub fn close(&mut self) {
        if self.state.is_null() {
            return;
        }
        // SAFETY: state is live until its close callback, which runs later.
        let state = unsafe { &*self.state };
        // SAFETY: closing an initialized handle once (state is nulled below).
        unsafe { (state.uv.close)(state.handle, on_closed) };
        self.state = null_mut();
    }
}

fn check(status: sys::napi_status, what: &str) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Error::from_reason(format!("{what} failed (napi status {status})")))
    }
}

/// libuv's callback: runs on the JS thread, outside any JS frame.
unsafe extern "C" fn on_readable(handle: *mut c_void, status: c_int, _events: c_int) {
    // SAFETY: `data` was set to the live state in `new`; the state outlives
    // the handle's callbacks (freed in on_closed); only this thread touches
    // it. No reference is held across the call into JS (which may call
    // start, stop or close): the fields are copied out first.
    let state_ptr = unsafe { *(handle as *mut *mut PollState) };
    let (env, callback, context) = unsafe {
        if status < 0 {
            // libuv stopped the handle: `start` must start it again. JS gets
            // the status and looks again (a failing look reports the error).
            (*state_ptr).active = false;
        }
        ((*state_ptr).env, (*state_ptr).callback, (*state_ptr).context)
    };
    // SAFETY: we are on the env's thread with no JS on the stack: open a
    // handle scope, and call through napi_make_callback, which runs the
    // nextTick and microtask queues afterwards as a libuv callback must.
    // Its receiver must be an object (undefined throws): the global, as for
    // Node's own callbacks of plain functions.
    unsafe {
        let mut scope = null_mut();
        if sys::napi_open_handle_scope(env, &mut scope) != sys::Status::napi_ok {
            return;
        }
        let (mut func, mut recv, mut arg, mut result) = (null_mut(), null_mut(), null_mut(), null_mut());
        if sys::napi_get_reference_value(env, callback, &mut func) == sys::Status::napi_ok
            && !func.is_null()
            && sys::napi_get_global(env, &mut recv) == sys::Status::napi_ok
            && sys::napi_create_int32(env, status, &mut arg) == sys::Status::napi_ok
        {
            let called = sys::napi_make_callback(env, context, recv, func, 1, &arg, &mut result);
            if called == sys::Status::napi_pending_exception {
                // A throwing callback is an uncaught exception, as in any libuv callback.
                let mut error = null_mut();
                if sys::napi_get_and_clear_last_exception(env, &mut error) == sys::Status::napi_ok {
                    sys::napi_fatal_exception(env, error);
                }
            }
        }
        sys::napi_close_handle_scope(env, scope);
    }
}

/// libuv is done with the handle: free it and what it pointed to.
unsafe extern "C" fn on_closed(handle: *mut c_void) {
    // SAFETY: `data` holds the Box from `new`, freed only here, once.
    let state = unsafe { Box::from_raw(*(handle as *mut *mut PollState)) };
    // SAFETY: on the JS thread, outside any JS frame; the reference and the
    // async context were made in `new` (null when that failed) and are
    // released once, here.
    unsafe {
        if !state.callback.is_null() {
            sys::napi_delete_reference(state.env, state.callback);
        }
        if !state.context.is_null() {
            sys::napi_async_destroy(state.env, state.context);
        }
        libc::free(handle);
    }
}

impl Drop for NativePoll {
    fn drop(&mut self) {
        self.close();
    }
}
