//! The recipes of docs/command.md, end to end with the real
//! servers: an unmodified uvicorn (`--fd 3`) serving a real ASGI app, and an
//! unmodified Express app doing `listen({ fd: 3 })`, each under
//! `rcluster run` (reload, stop) and the daemon (SIGKILL of the daemon).
//!
//! uvicorn and express come from PyPI and npm: `make test` (target
//! `cli-test-deps`) installs them under `target/cli-deps` and sets
//! `RCLUSTER_TEST_PYTHON_BIN` (the venv's bin directory) and
//! `RCLUSTER_TEST_NODE_PATH`. Without them these tests say so and pass
//! without running (plain `cargo test` on a machine without them).

#[path = "cli/support.rs"]
mod support;

use std::time::Duration;

use support::*;

fn dependency(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!("skipped: {var} is not set (make test installs the server and sets it)");
            None
        }
    }
}

/// The recipes put 32 clients on 2 CPUs and time how fast workers die: one at a time.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// run: serve, reload under load (0 failures), stop; then the daemon: SIGKILL leaves nobody.
///
/// `resets_allowed`: uvicorn's own graceful shutdown closes the connections
/// it has accepted but not yet read a request from (`H11Protocol.shutdown`:
/// no request cycle yet -> `transport.close()`), and asyncio accepts many at
/// a time, so under load each stopped uvicorn resets a few connections that
/// were already its own. That is uvicorn's (it does the same under its own
/// `--workers` and under gunicorn); rcluster's part, the shared queue and the
/// grace, loses nothing (Express here, and `cli.rs`'s 20 reloads). For
/// uvicorn the test counts them and bounds them; for Express none may fail.
fn recipe(name: &str, cmd: &[&str], env: &[(&str, &str)], grace: &str, expect: &str, resets_allowed: bool) {
    let _heavy = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let mark = unique(name);
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let cwd = fixture("");
    let mut args =
        vec!["-i", "2", "--listen", "127.0.0.1:0", "--reload-grace", grace, "--cwd", &cwd, "-e", &env_mark, "--"];
    args.extend(cmd);
    let mut run = Foreground::start(&args, env);
    let port = run.port();
    wait_until(Duration::from_secs(30), "both workers to serve", || {
        http_get(port).is_ok() && serving_pids(port, 8).len() == 2
    });
    let body = http_get(port).unwrap();
    assert!(body.contains(expect), "{body}");
    let load = Load::start(port, 32);
    for _ in 0..3 {
        run.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(200));
        run.wait_line("reload done", Duration::from_secs(30));
        run.seen.retain(|l| !l.contains("reload done"));
        // The old workers leave after the grace.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (answered, failures) = load.finish();
    eprintln!("{name}: {answered} requests during 3 reloads, {} failed", failures.len());
    assert!(answered > 50);
    if resets_allowed {
        assert!(
            failures.iter().all(|f| f.contains("reset by peer")),
            "{name}: {:?}",
            &failures[..failures.len().min(5)]
        );
        assert!(failures.len() * 20 < answered, "{name}: {} of {answered} failed", failures.len());
    } else {
        assert!(failures.is_empty(), "{name}: {} failed: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    }
    run.signal(libc::SIGTERM);
    assert_eq!(run.wait_exit(Duration::from_secs(20)).code(), Some(0), "{:#?}", run.seen);
    assert_none_left(&mark);

    // The daemon, killed outright: the real servers go with it within 1 s.
    let home = Home::new(name);
    let mut start = vec!["start", name, "-i", "2", "--listen", "127.0.0.1:0", "--cwd", &cwd, "-e", &env_mark, "--"];
    start.extend(cmd);
    let mut command = std::process::Command::new(RCLUSTER);
    command.args(&start).envs(env.iter().copied());
    let out = home.command_within(&mut command, Duration::from_secs(30));
    assert!(out.ok(), "{out:?}");
    let port = home.port_of(name);
    wait_until(Duration::from_secs(30), "the daemon's app to serve", || http_get(port).is_ok());
    wait_until(Duration::from_secs(10), "2 workers", || marked_pids(&mark).len() == 2);
    let daemon = home.daemon_pid().unwrap();
    // SAFETY: the daemon of this test's home.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(1));
    let left = marked_pids(&mark);
    kill_marked(&mark);
    assert!(left.is_empty(), "{name}: alive 1 s after the daemon's SIGKILL: {left:?}");
}

#[test]
fn uvicorn_unmodified_serves_an_asgi_app_from_inherited_sockets() {
    let Some(bin) = dependency("RCLUSTER_TEST_PYTHON_BIN") else { return };
    let uvicorn = format!("{bin}/uvicorn");
    recipe("uvicorn", &[&uvicorn, "asgi_app:app", "--fd", "3", "--no-access-log"], &[], "2s", "path /", true);
}

#[test]
fn express_unmodified_listens_on_fd_3() {
    let Some(node_path) = dependency("RCLUSTER_TEST_NODE_PATH") else { return };
    recipe("express", &["node", "express_app.js"], &[("NODE_PATH", &node_path)], "1s", "express", false);
}

/// The other route, with the bindings: the repository's Python and Node
/// example servers, which use rcluster, under `rcluster run` (their own
/// `listen` served by this primary, round robin): serve from every worker,
/// reload on SIGHUP, stop with exit 0 on SIGTERM. `make test` builds the
/// bindings first and sets `RCLUSTER_TEST_BINDING_PYTHON` (the .venv's
/// python, with the rcluster package) and `RCLUSTER_TEST_BINDING_NODE`
/// (set when `require('rcluster')` resolves from the repository).
fn binding_example(name: &str, cmd: &[&str]) {
    let mark = unique(name);
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let root = env!("CARGO_MANIFEST_DIR");
    let mut args = vec!["-i", "2", "--cwd", root, "-e", &env_mark, "--"];
    args.extend(cmd);
    let mut run = Foreground::start(&args, &[]);
    let port = run.port();
    wait_until(Duration::from_secs(30), "both workers to serve", || serving_pids(port, 8).len() == 2);
    let before = serving_pids(port, 8);
    run.signal(libc::SIGHUP);
    run.wait_line("reload done", Duration::from_secs(30));
    wait_until(Duration::from_secs(15), "the old workers to leave", || before.iter().all(|&p| pid_exited(p)));
    assert!(serving_pids(port, 8).is_disjoint(&before));
    run.signal(libc::SIGTERM);
    assert_eq!(run.wait_exit(Duration::from_secs(20)).code(), Some(0), "{:#?}", run.seen);
    assert_none_left(&mark);
}

#[test]
fn python_binding_example_under_rcluster_run() {
    let Some(python) = dependency("RCLUSTER_TEST_BINDING_PYTHON") else { return };
    binding_example("py-example", &[&python, "examples/python/hello_server.py", "--port", "0"]);
}

#[test]
fn node_binding_example_under_rcluster_run() {
    if dependency("RCLUSTER_TEST_BINDING_NODE").is_none() {
        return;
    }
    binding_example("node-example", &["node", "examples/node/hello_server.js", "--port", "0"]);
}
