//! The primary under systemd's protocols (issue #22, point 1), with the real
//! `systemd-socket-activate` from Debian's systemd package standing in for
//! systemd, and a datagram socket of the test's own as `NOTIFY_SOCKET`.

mod common;
use common::*;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A GET that waits for the server to come up (systemd-socket-activate
/// starts it on the first connection, which the kernel queues meanwhile).
fn get(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match http_get(port) {
            Ok(body) => return body,
            Err(e) => {
                assert!(Instant::now() < deadline, "no answer on {port}: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_primary_takes_the_socket_systemd_passed_instead_of_binding() {
    let _serial = serial();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let primary = Killed(
        Command::new("systemd-socket-activate")
            .args(["-l", &address, "-E", &format!("TEST_PRIMARY_PORT={port}"), "-E", &format!("TEST_PORT={port}")])
            .args([TESTWORKER, "primary", "2", "http"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate (Debian package systemd) runs"),
    );
    // Had the primary bound 127.0.0.1:PORT itself, the listen would fail
    // (systemd holds the address): it serves only through the passed socket.
    let workers: std::collections::HashSet<u32> = (0..10).map(|_| worker_of(&get(port))).collect();
    assert_eq!(workers.len(), 2, "both workers serve the passed socket: {workers:?}");
    let pid = primary.0.id();
    let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
    assert!(fd3.to_string_lossy().starts_with("socket:"), "fd 3 is still the passed socket: {fd3:?}");
    // Its workers are not told about the service's sockets.
    for child in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let list = std::fs::read_to_string(child.path().join("children")).unwrap_or_default();
        for worker in list.split_whitespace() {
            let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&environ).contains("LISTEN_FDS"), "worker {worker} got LISTEN_FDS");
        }
    }
}

/// Runs the test primary under `sh` so `LISTEN_PID` can be its own pid, with
/// `fd3` (a shell redirection) as fd 3; returns its stderr after a request.
fn primary_with_listen_env(fd3: &str, listen_pid: &str) -> String {
    let script = format!("LISTEN_FDS=1 LISTEN_PID={listen_pid} exec {TESTWORKER} primary 1 http {fd3}");
    let mut child =
        Killed(Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let port: u16 = ready_port(&line);
    assert!(http_get(port).is_ok(), "it binds and serves as without systemd");
    let _ = child.0.kill();
    let _ = child.0.wait();
    let mut stderr = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    stderr
}

#[test]
fn bad_socket_activation_input_is_a_warning_not_a_wrong_socket() {
    let _serial = serial();
    let not_a_socket = primary_with_listen_env("3</dev/null", "$$");
    assert!(not_a_socket.contains("LISTEN_FDS fd 3") && not_a_socket.contains("not used"), "{not_a_socket}");
    let not_ours = primary_with_listen_env("", "1");
    assert!(not_ours.contains("LISTEN_PID is 1, not this process"), "{not_ours}");
}

#[test]
fn readiness_reloads_and_the_stop_are_told_to_notify_socket() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("rcluster-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut primary =
        PrimaryProcess::start(2, "http", &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("TEST_SIGNALS", "1")]);
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1\nSTATUS=2 workers listening, generation 0");
    primary.signal(libc::SIGHUP);
    let reloading = next();
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
    assert_eq!(next(), "READY=1\nSTATUS=2 workers listening, generation 1");
    primary.signal(libc::SIGTERM);
    assert_eq!(next(), "STOPPING=1");
    assert!(primary.wait_exit(Duration::from_secs(15)).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_notify_socket_nobody_listens_on_is_a_warning() {
    let _serial = serial();
    let mut child = Killed(
        Command::new(TESTWORKER)
            .args(["primary", "1", "http"])
            .env("NOTIFY_SOCKET", "/nonexistent/notify")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let port: u16 = ready_port(&line);
    assert!(http_get(port).is_ok(), "it serves anyway");
    // The warning comes when READY=1 is due (once the worker listens).
    let (lines, received) = std::sync::mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let warning = received.recv_timeout(Duration::from_secs(10)).expect("a warning on stderr");
    assert!(warning.contains("NOTIFY_SOCKET: cannot tell systemd"), "{warning}");
    assert!(http_get(port).is_ok(), "and still serves");
}

/// A primary started as systemd starts a socket-activated service: the
/// listening socket at fd 3, `LISTEN_FDS=1`, `LISTEN_PID` its own pid.
fn start_activated(socket: &std::net::TcpListener, port: u16) -> Killed {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = socket.as_raw_fd();
    let mut command = Command::new("sh");
    command
        .args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh", TESTWORKER, "primary", "2", "http"])
        .env("LISTEN_FDS", "1")
        .env("TEST_PRIMARY_PORT", port.to_string())
        .env("TEST_PORT", port.to_string())
        .env("TEST_SIGNALS", "1")
        .stdout(Stdio::null());
    // SAFETY: dup2 in the child before exec, an async-signal-safe call.
    unsafe {
        command.pre_exec(move || {
            // At fd 3 already, dup2 would keep its close-on-exec flag: clear it instead.
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    Killed(command.spawn().unwrap())
}

#[test]
fn a_restart_under_socket_activation_refuses_and_drops_nothing() {
    let _serial = serial();
    // The test holds the socket across the restart, as systemd does.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let mut first = start_activated(&socket, port);
    get(port);
    let load = Load::start(port, 8);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: SIGTERM to the child we started: a graceful stop.
    unsafe { libc::kill(first.0.id() as i32, libc::SIGTERM) };
    assert!(first.0.wait().unwrap().success(), "the first primary stopped cleanly");
    // Meanwhile clients queue in the kernel, on the socket the test holds.
    let _second = start_activated(&socket, port);
    std::thread::sleep(Duration::from_millis(1500));
    let samples = load.finish();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    assert!(samples.len() > 100, "the load ran ({} requests)", samples.len());
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), samples.len(), failed.first());
}
