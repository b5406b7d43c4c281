//! The `rcluster` command, driven as a user would: the real binary, real
//! worker processes (a plain Python server that knows nothing of rcluster,
//! and `rcluster-testworker`, which uses the library), real HTTP clients.
//! uvicorn and Express are in `cli_apps.rs`.

#[path = "cli/support.rs"]
mod support;

use std::time::Duration;

use support::*;

static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The reload tests load the 2 CPUs: one at a time, and not while a test
/// times how fast workers die.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

const SECS: fn(u64) -> Duration = Duration::from_secs;

// ----- foreground: rcluster run ---------------------------------------------

#[test]
fn run_gives_an_unmodified_program_its_sockets_by_the_systemd_protocol() {
    let mark = unique("run-sd");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let mut run = Foreground::start(
        &[
            "-i",
            "2",
            "--listen",
            "web=127.0.0.1:0",
            "--reload-grace",
            "300ms",
            "-e",
            &env_mark,
            "--",
            python(),
            &sd_server(),
        ],
        &[],
    );
    let port = run.port();
    // sd_server exits at once unless LISTEN_PID is its own pid and LISTEN_FDS is set.
    let body = http_get(port).unwrap();
    assert!(body.contains("fds 1 names web"), "{body}");
    // Both accept on the one socket (the kernel picks which: wait for each to start).
    let mut first = Default::default();
    wait_until(SECS(10), "both workers to serve", || {
        first = serving_pids(port, 8);
        first.len() == 2
    });

    // SIGHUP: a rolling reload, new pids serve.
    run.signal(libc::SIGHUP);
    run.wait_line("reload done", SECS(15));
    wait_until(SECS(10), "the old workers to leave", || first.iter().all(|&p| pid_exited(p)));
    let second = serving_pids(port, 8);
    assert!(!second.is_empty() && second.is_disjoint(&first), "{first:?} -> {second:?}");

    // SIGTTIN / SIGTTOU: one worker more, one less.
    run.signal(libc::SIGTTIN);
    wait_until(SECS(10), "a third worker", || marked_pids(&mark).len() == 3);
    run.signal(libc::SIGTTOU);
    wait_until(SECS(10), "back to two workers", || marked_pids(&mark).len() == 2);

    // A crashed worker is replaced.
    let victim = *marked_pids(&mark).first().unwrap();
    // SAFETY: a worker of ours, found by our mark.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    run.wait_line("exited unexpectedly", SECS(10));
    wait_until(SECS(10), "a replacement", || {
        let pids = marked_pids(&mark);
        pids.len() == 2 && !pids.contains(&victim)
    });
    http_get(port).unwrap();

    // SIGTERM: graceful stop, exit 0, nobody left.
    run.signal(libc::SIGTERM);
    let status = run.wait_exit(SECS(15));
    assert_eq!(status.code(), Some(0), "{:#?}", run.seen);
    assert_none_left(&mark);
    assert!(http_get(port).is_err(), "the socket is closed after the stop");
}

#[test]
fn run_serves_a_program_that_uses_rcluster_through_its_own_listen() {
    let mark = unique("run-lib");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let mut run =
        Foreground::start(&["-i", "max", "-e", "TEST_PORT=0", "-e", &env_mark, "--", TESTWORKER, "http"], &[]);
    let cpus = std::thread::available_parallelism().unwrap().get();
    let port = run.port();
    wait_until(SECS(10), "one worker per CPU", || marked_pids(&mark).len() == cpus);
    let pids = serving_pids(port, 4 * cpus);
    assert_eq!(pids.len(), cpus, "round robin reaches every worker: {pids:?}");
    run.signal(libc::SIGHUP);
    run.wait_line("reload done", SECS(15));
    run.signal(libc::SIGINT);
    assert_eq!(run.wait_exit(SECS(15)).code(), Some(0));
    assert_none_left(&mark);
}

#[test]
fn run_under_systemd_socket_activation_hands_systemds_socket_on_to_an_unmodified_program() {
    // systemd -> rcluster run -> the program: the --listen address is the
    // socket systemd passed (no bind), so a connection made before anything
    // started is served. systemd-socket-activate stands in for systemd
    // (make test-tools installs it).
    let mark = unique("run-activated");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let sd = sd_server();
    let mut activator = std::process::Command::new("systemd-socket-activate")
        .args(["-l", &address, RCLUSTER, "run", "-i", "2", "--listen", &address, "-e", &env_mark, "--", python(), &sd])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd) runs");
    // systemd-socket-activate binds, waits for a connection, then execs rcluster.
    wait_until(SECS(10), "the socket unit to listen", || std::net::TcpStream::connect(&address).is_ok());
    let body = http_get(port).unwrap();
    assert!(body.contains("fds 1"), "{body}");
    wait_until(SECS(10), "both workers to serve", || serving_pids(port, 8).len() == 2);
    // SAFETY: our own child (rcluster run, after the exec).
    unsafe { libc::kill(activator.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + SECS(15);
    let status = loop {
        if let Some(status) = activator.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = activator.kill();
            panic!("rcluster run did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert_none_left(&mark);
}

#[test]
fn run_rejects_bad_input_with_one_line_and_leaves_no_worker() {
    let mark = unique("run-bad");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = format!("127.0.0.1:{}", busy.local_addr().unwrap().port());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-i", "2"], "missing command"),
        (vec!["-i", "2", "--listen", &busy_port, "-e", &env_mark, "--", "python3", "x.py"], "cannot listen on"),
        (vec!["--", "no-such-program-rcluster"], "command not found"),
        (vec!["--listen", "127.0.0.1:0", "--policy", "rr", "--", "python3"], "--listen"),
        (vec!["-i", "zero", "--", "python3"], "bad instance count"),
        (vec!["--listen", "nowhere:80", "--", "python3"], "bad listen address"),
    ];
    let home = Home::new("run-bad");
    for (args, expected) in cases {
        let mut full = vec!["run"];
        full.extend(&args);
        let output = home.cli_within(&full, SECS(20));
        assert!(!output.ok(), "{args:?} succeeded");
        assert_eq!(output.stderr.lines().count(), 1, "{args:?}: one line: {:?}", output.stderr);
        assert!(output.stderr.contains(expected), "{args:?}: {:?} lacks {expected:?}", output.stderr);
    }
    assert_none_left(&mark);
}

// ----- daemon mode ---------------------------------------------------------------

#[test]
fn daemon_verbs_start_ls_reload_scale_logs_describe_stop_restart_delete_kill() {
    let home = Home::new("verbs");
    let mark = unique("verbs");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let sd = sd_server();
    let out = home.cli(&[
        "start",
        "web",
        "-i",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--reload-grace",
        "300ms",
        "-e",
        &env_mark,
        "--",
        python(),
        &sd,
    ]);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("started web (2 worker(s), listening on 127.0.0.1:"), "{out:?}");
    let daemon = home.daemon_pid().expect("a daemon pid file");
    let port = home.port_of("web");
    wait_until(SECS(10), "both workers to serve", || serving_pids(port, 6).len() == 2);

    // A second app, a program that uses rcluster: primary-side dispatch.
    let out = home.cli(&["start", "lib", "-i", "2", "-e", "TEST_PORT=0", "-e", &env_mark, "--", TESTWORKER, "http"]);
    assert!(out.ok(), "{out:?}");
    let lib_port = home.port_of("lib");
    assert_eq!(serving_pids(lib_port, 6).len(), 2);

    // ls: a table and JSON.
    let ls = home.cli(&["ls"]);
    assert!(ls.ok());
    let header = ls.stdout.lines().next().unwrap().to_owned();
    for column in ["APP", "ID", "PID", "STATE", "RESTARTS", "UPTIME", "CPU", "MEM", "CONNS"] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(ls.stdout.lines().filter(|l| l.starts_with("web ")).count(), 2, "{}", ls.stdout);
    let json = home.json(&["ls", "--json"]);
    let lib = json["apps"].as_array().unwrap().iter().find(|a| a["name"] == "lib").unwrap().clone();
    let dispatched: u64 = lib["workers"].as_array().unwrap().iter().map(|w| w["dispatched"].as_u64().unwrap()).sum();
    assert!(dispatched >= 6, "connections dispatched are counted: {lib}");
    assert!(lib["workers"][0]["rss_bytes"].as_u64().unwrap() > 0);

    // reload: returns when done, new pids.
    let before = home.worker_pids("web");
    let out = home.cli(&["reload", "web"]);
    assert!(out.ok() && out.stdout.contains("reloaded web"), "{out:?}");
    assert!(before.iter().all(|&p| pid_exited(p)), "old workers are gone when reload returns");
    let after = home.worker_pids("web");
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)));
    let out = home.cli(&["reload", "lib"]);
    assert!(out.ok() && out.stdout.contains("reloaded lib"), "{out:?}");

    // scale
    let out = home.cli(&["scale", "web", "3"]);
    assert!(out.ok(), "{out:?}");
    wait_until(SECS(10), "3 web workers", || home.worker_pids("web").len() == 3);
    let out = home.cli(&["scale", "web", "1"]);
    assert!(out.ok(), "{out:?}");
    wait_until(SECS(10), "1 web worker", || home.worker_pids("web").len() == 1);

    // logs: each line prefixed with its worker id and stream.
    let mut logs = String::new();
    wait_until(SECS(10), "the workers' output in the log", || {
        logs = home.cli(&["logs", "web", "-n", "200"]).stdout;
        logs.contains("1 out| sd_server worker 1") && logs.contains("1 err| sd_server worker 1 says hello")
    });
    assert!(logs.contains("rcluster| "), "the daemon's notes: {logs}");
    // logs -f follows what is written.
    let mut follow = std::process::Command::new(RCLUSTER)
        .args(["logs", "web", "-f", "-n", "0"])
        .env("RCLUSTER_HOME", home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(follow.stdout.take().unwrap());
    assert!(home.cli(&["scale", "web", "2"]).ok());
    let mut line = String::new();
    let reader = std::thread::spawn(move || {
        let mut found = String::new();
        while std::io::BufRead::read_line(&mut stdout, &mut line).unwrap_or(0) > 0 {
            if line.contains("out| sd_server worker") {
                found = line.clone();
                break;
            }
            line.clear();
        }
        found
    });
    wait_until(SECS(10), "logs -f to print the new worker's line", || reader.is_finished());
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(reader.join().unwrap().contains("sd_server worker"));

    // describe
    let out = home.cli(&["describe", "web"]);
    assert!(
        out.ok() && out.stdout.contains("status:     running") && out.stdout.contains("policy:     shared"),
        "{out:?}"
    );
    let data = home.json(&["describe", "web", "--json"]);
    assert_eq!(data["spec"]["cmd"][0], python());
    assert_eq!(data["workers"].as_array().unwrap().len(), 2);

    // stop: workers gone, port closed, app listed as stopped.
    let web_pids = home.worker_pids("web");
    let out = home.cli(&["stop", "web"]);
    assert!(out.ok(), "{out:?}");
    assert!(web_pids.iter().all(|&p| pid_exited(p)));
    assert!(http_get(port).is_err());
    let json = home.json(&["ls", "--json"]);
    assert!(json["apps"].as_array().unwrap().iter().any(|a| a["name"] == "web" && a["status"] == "stopped"));
    // restart: serves again (same spec; port 0 picks a new port).
    let out = home.cli(&["restart", "web"]);
    assert!(out.ok(), "{out:?}");
    let port = home.port_of("web");
    http_get(port).unwrap();
    // an existing name is refused
    let out = home.cli(&["start", "web", "--", python(), &sd]);
    assert!(!out.ok() && out.stderr.trim().lines().count() == 1 && out.stderr.contains("exists"), "{out:?}");
    // delete
    let out = home.cli(&["delete", "web"]);
    assert!(out.ok(), "{out:?}");
    assert!(home.json(&["ls", "--json"])["apps"].as_array().unwrap().iter().all(|a| a["name"] != "web"));
    let out = home.cli(&["reload", "web"]);
    assert!(!out.ok() && out.stderr.contains("no app named web"), "{out:?}");

    // kill: every app stopped, the daemon gone.
    let out = home.cli(&["kill"]);
    assert!(out.ok(), "{out:?}");
    wait_until(SECS(5), "the daemon to exit", || pid_exited(daemon));
    assert_none_left(&mark);
    let out = home.cli(&["ls"]);
    assert!(!out.ok() && out.stderr.contains("no daemon is running"), "{out:?}");
}

#[test]
fn daemon_bad_input_one_line_errors_stale_socket_second_daemon() {
    let _heavy = heavy();
    let home = Home::new("bad");
    let mark = unique("bad");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let one_line_error = |out: &Output, expected: &str| {
        assert!(!out.ok(), "succeeded: {out:?}");
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "one line: {out:?}");
        assert!(out.stderr.contains(expected), "{expected:?} not in {out:?}");
    };
    // No daemon yet.
    one_line_error(&home.cli(&["ls"]), "no daemon is running");
    one_line_error(&home.cli(&["reload", "x"]), "no daemon is running");
    // A missing command does not even start the daemon.
    one_line_error(&home.cli(&["start", "x", "-i", "2"]), "missing command");
    assert!(home.daemon_pid().is_none());

    let sd = sd_server();
    let out = home.cli(&["start", "web", "--listen", "127.0.0.1:0", "-e", &env_mark, "--", python(), &sd]);
    assert!(out.ok(), "{out:?}");
    let port = home.port_of("web");
    wait_until(SECS(10), "one worker", || marked_pids(&mark).len() == 1);
    // Port in use: refused, nothing started.
    let before = 1;
    let busy = format!("127.0.0.1:{port}");
    one_line_error(
        &home.cli(&["start", "web2", "--listen", &busy, "-e", &env_mark, "--", python(), &sd]),
        "cannot listen on",
    );
    let now = marked_pids(&mark);
    assert_eq!(now.len(), before, "no worker left behind: {}", describe_pids(&now));
    assert!(home.json(&["ls", "--json"])["apps"].as_array().unwrap().iter().all(|a| a["name"] != "web2"));
    // A second daemon.
    one_line_error(&home.cli(&["daemon"]), "already running");

    // A dead daemon's socket: said so, and `start` replaces it.
    let daemon = home.daemon_pid().unwrap();
    // SAFETY: the daemon of this test's home.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    wait_until(SECS(2), "the daemon to die", || pid_exited(daemon));
    wait_until(SECS(5), "its workers to die", || marked_pids(&mark).is_empty());
    assert!(home.path().join("daemon.sock").exists());
    one_line_error(&home.cli(&["ls"]), "dead daemon");
    let out = home.cli(&["start", "again", "-e", &env_mark, "--listen", "127.0.0.1:0", "--", python(), &sd]);
    assert!(out.ok(), "{out:?}");
    assert_ne!(home.daemon_pid(), Some(daemon));
    http_get(home.port_of("again")).unwrap();
}

#[test]
fn daemon_logs_rotate_at_their_bound_and_sigterm_stops_every_app() {
    let home = Home::new("rotate");
    let mark = unique("rotate");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let sd = sd_server();
    // The daemon takes the bound from the environment of the CLI that starts it.
    let mut start = std::process::Command::new(RCLUSTER);
    start
        .args(["start", "web", "-i", "2", "--listen", "127.0.0.1:0", "--reload-grace", "100ms", "-e", &env_mark, "--"])
        .args([python(), sd.as_str()])
        .env("RCLUSTER_LOG_MAX_BYTES", "2000");
    let out = home.command_within(&mut start, SECS(20));
    assert!(out.ok(), "{out:?}");
    let log = home.path().join("logs/web.log");
    let rotated = home.path().join("logs/web.log.1");
    for _ in 0..6 {
        assert!(home.cli(&["reload", "web"]).ok());
        if rotated.exists() {
            break;
        }
    }
    wait_until(SECS(5), "a rotation", || rotated.exists());
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    assert!(size(&rotated) >= 2000 && size(&rotated) < 2000 + 300, "rotated at the bound: {}", size(&rotated));
    assert!(size(&log) < 2000 + 300);
    // SIGTERM: every app stops gracefully, then the daemon; its files go.
    let daemon = home.daemon_pid().unwrap();
    // SAFETY: the daemon of this test's home.
    unsafe { libc::kill(daemon, libc::SIGTERM) };
    wait_until(SECS(10), "the daemon to exit", || pid_exited(daemon));
    assert_none_left(&mark);
    assert!(!home.path().join("daemon.sock").exists());
}

#[test]
fn daemon_killed_with_sigkill_leaves_no_worker_after_one_second() {
    let _heavy = heavy();
    let home = Home::new("sigkill");
    let mark = unique("sigkill");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let sd = sd_server();
    assert!(home
        .cli(&["start", "web", "-i", "2", "--listen", "127.0.0.1:0", "-e", &env_mark, "--", python(), &sd])
        .ok());
    assert!(home
        .cli(&["start", "lib", "-i", "2", "-e", "TEST_PORT=0", "-e", &env_mark, "--", TESTWORKER, "http"])
        .ok());
    let (web, lib) = (home.port_of("web"), home.port_of("lib"));
    http_get(web).unwrap();
    http_get(lib).unwrap();
    wait_until(SECS(10), "4 workers", || marked_pids(&mark).len() == 4);
    let daemon = home.daemon_pid().unwrap();
    // SAFETY: the daemon of this test's home.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(1));
    let left = marked_pids(&mark);
    kill_marked(&mark);
    assert!(left.is_empty(), "workers alive 1 s after the daemon's SIGKILL: {left:?}");
}

#[test]
fn another_user_cannot_control_the_daemon() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to run the CLI as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new("perm");
    let mark = unique("perm");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let out = home.cli(&["start", "web", "--listen", "127.0.0.1:0", "-e", &env_mark, "--", python(), &sd_server()]);
    assert!(out.ok(), "{out:?}");
    let socket = home.path().join("daemon.sock");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(home.path()), 0o700);
    assert_eq!(mode(&socket), 0o600);
    let as_nobody = |args: &[&str]| {
        let mut command = std::process::Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", RCLUSTER]).args(args);
        home.command_within(&mut command, SECS(20))
    };
    // 1. The directory (0700) keeps others out.
    let out = as_nobody(&["stop", "web"]);
    assert!(!out.ok() && out.stderr.contains("permission denied"), "{out:?}");
    // 2. Even in a directory others may enter, the socket (0600) does.
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let out = as_nobody(&["stop", "web"]);
    assert!(!out.ok() && out.stderr.contains("permission denied"), "{out:?}");
    // 3. And with the socket opened to all, the daemon checks the caller's uid.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&["stop", "web"]);
    assert!(!out.ok() && out.stderr.contains("permission denied"), "{out:?}");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    // The app still runs.
    http_get(home.port_of("web")).unwrap();
    assert_eq!(home.json(&["ls", "--json"])["apps"][0]["status"], "running");
}

#[test]
fn a_reload_to_a_version_that_crashes_at_start_keeps_the_old_workers_and_fails() {
    let home = Home::new("crash");
    let mark = unique("crash");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let flag = home.path().join("broken-deploy");
    let crash = format!("SD_CRASH_FILE={}", flag.display());
    // The broken deploy dies at once, before the daemon's monitor can see it
    // between two of its looks (exec keeps the pid LISTEN_PID names).
    let crashing = format!("[ -e \"$SD_CRASH_FILE\" ] && exit 3; exec {} {}", python(), sd_server());
    let out = home.cli(&[
        "start",
        "web",
        "-i",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--reload-grace",
        "500ms",
        "--stop-timeout",
        "3s",
        "-e",
        &crash,
        "-e",
        &env_mark,
        "--",
        "/bin/sh",
        "-c",
        &crashing,
    ]);
    assert!(out.ok(), "{out:?}");
    let port = home.port_of("web");
    let old: std::collections::BTreeSet<i32> = home.worker_pids("web").into_iter().collect();
    wait_until(SECS(10), "both to serve", || serving_pids(port, 8).len() == 2);
    std::fs::write(&flag, "").unwrap();
    let reload = {
        let path = home.path().to_owned();
        std::thread::spawn(move || {
            std::process::Command::new(RCLUSTER).args(["reload", "web"]).env("RCLUSTER_HOME", path).output().unwrap()
        })
    };
    // Past the grace, the new workers keep dying at start: the old ones still serve.
    std::thread::sleep(Duration::from_millis(1500));
    let serving = serving_pids(port, 6);
    assert!(serving.is_subset(&old), "the old workers serve: {serving:?} (old {old:?})");
    let out = reload.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("exited unexpectedly"), "{out:?}");
    // The deploy is fixed: the next reload starts fresh and serves.
    std::fs::remove_file(&flag).unwrap();
    let out = home.cli(&["reload", "web"]);
    assert!(out.ok(), "{out:?}");
    http_get(port).unwrap();
    assert!(home.cli(&["kill"]).ok());
    assert_none_left(&mark);
}

// ----- config file -------------------------------------------------------------

#[test]
fn config_file_starts_every_app_and_names_an_unknown_key_and_its_line() {
    let home = Home::new("config");
    let mark = unique("config");
    let file = home.path().join("rcluster.toml");
    std::fs::write(
        &file,
        format!(
            r#"# two apps
[[app]]
name = "web"
cmd = ["{py}", "{sd}"]
instances = 2
listen = ["api=127.0.0.1:0"]
env = {{ RCLUSTER_TEST_MARK = "{mark}" }}

[app.reload]
grace = "300ms"
stop_timeout = "5s"

[[app]]
name = "lib"
cmd = "{tw} http"
instances = "max"
cwd = "."
env = {{ RCLUSTER_TEST_MARK = "{mark}", TEST_PORT = "0" }}

[app.restart]
delay = "50ms"
max_delay = "1s"
crash_loop_count = 3
"#,
            sd = sd_server(),
            py = python(),
            tw = TESTWORKER
        ),
    )
    .unwrap();
    let out = home.cli(&["start", file.to_str().unwrap()]);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.contains("started web") && out.stdout.contains("started lib"), "{out:?}");
    let body = http_get(home.port_of("web")).unwrap();
    assert!(body.contains("names api"), "{body}");
    http_get(home.port_of("lib")).unwrap();
    let data = home.json(&["describe", "lib", "--json"]);
    assert_eq!(data["spec"]["restart_delay_ms"], 50);
    assert_eq!(data["spec"]["cwd"], home.path().to_str().unwrap());
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(data["instances"], cpus);
    // Starting the same file again: the names exist.
    let out = home.cli(&["start", file.to_str().unwrap()]);
    assert!(!out.ok() && out.stderr.contains("exists"), "{out:?}");

    // A typo: one line naming the key, the file and the line.
    let typo = home.path().join("typo.toml");
    std::fs::write(&typo, "[[app]]\nname = \"x\"\ncmd = \"python3\"\ninstnces = 2\n").unwrap();
    let out = home.cli(&["start", typo.to_str().unwrap()]);
    assert!(!out.ok(), "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("typo.toml:4") && out.stderr.contains("instnces"), "{out:?}");
    let nested = home.path().join("nested.toml");
    std::fs::write(
        &nested,
        "[[app]]\nname = \"x\"\ncmd = \"python3\"\n[app.reload]\ngrace = \"1s\"\nwait_redy = true\n",
    )
    .unwrap();
    let out = home.cli(&["start", nested.to_str().unwrap()]);
    assert!(!out.ok() && out.stderr.contains("nested.toml:6") && out.stderr.contains("wait_redy"), "{out:?}");
    assert!(home.json(&["ls", "--json"])["apps"].as_array().unwrap().iter().all(|a| a["name"] != "x"));
    assert!(home.cli(&["kill"]).ok());
    assert_none_left(&mark);
}

// ----- reloads under load -----------------------------------------------------------

/// 20 `rcluster reload`s in a row under 32 clients, each request a new
/// connection: not one fails.
fn twenty_reloads_under_load(home: &Home, app: &str, mark: &str) {
    let port = home.port_of(app);
    wait_until(SECS(10), "every worker to serve", || serving_pids(port, 8).len() == 2);
    let load = Load::start(port, 32);
    std::thread::sleep(Duration::from_millis(300));
    let mut generations = std::collections::BTreeSet::new();
    for i in 0..20 {
        let out = home.cli(&["reload", app]);
        assert!(out.ok(), "reload {i}: {out:?}");
        generations.insert(out.stdout.trim().to_owned());
    }
    std::thread::sleep(Duration::from_millis(300));
    let (answered, failures) = load.finish();
    assert_eq!(generations.len(), 20, "{generations:?}");
    eprintln!("{app}: {answered} requests during 20 reloads, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        answered + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(answered > 200, "the load ran: {answered}");
    assert!(home.cli(&["kill"]).ok());
    assert_none_left(mark);
}

#[test]
fn twenty_reloads_under_load_lose_nothing_with_inherited_sockets() {
    let _heavy = heavy();
    let home = Home::new("reload-sd");
    let mark = unique("reload-sd");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let out = home.cli(&[
        "start",
        "web",
        "-i",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--reload-grace",
        "500ms",
        "-e",
        &env_mark,
        "--",
        python(),
        &sd_server(),
    ]);
    assert!(out.ok(), "{out:?}");
    twenty_reloads_under_load(&home, "web", &mark);
}

#[test]
fn twenty_reloads_under_load_lose_nothing_with_primary_dispatch() {
    let _heavy = heavy();
    let home = Home::new("reload-lib");
    let mark = unique("reload-lib");
    let env_mark = format!("RCLUSTER_TEST_MARK={mark}");
    let out = home.cli(&["start", "lib", "-i", "2", "-e", "TEST_PORT=0", "-e", &env_mark, "--", TESTWORKER, "http"]);
    assert!(out.ok(), "{out:?}");
    twenty_reloads_under_load(&home, "lib", &mark);
}
