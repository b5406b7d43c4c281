//! Several rcluster hosts behind a real nginx (issue #22, point 4): two
//! primaries, each with two workers, as the upstreams of an nginx the test
//! starts with its own configuration in a temporary directory. Rolling
//! reloads of each host in turn under load through nginx lose no request;
//! one host killed outright, nginx moves on to the other.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// nginx in the foreground with a configuration of the test's own; stopped
/// (by pid) when dropped, its directory removed.
struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Nginx {
    fn start(upstreams: &[u16]) -> Nginx {
        let dir = std::env::temp_dir().join(format!("rcluster-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let d = dir.display();
        let servers: String = upstreams.iter().map(|p| format!("    server 127.0.0.1:{p} max_fails=0;\n")).collect();
        // SAFETY: geteuid cannot fail.
        let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "" };
        let conf = format!(
            "{user}
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream app {{
{servers}    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_next_upstream error timeout http_502;
    }}
  }}
}}
"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(nginx_binary())
            .args(["-p", dir.to_str().unwrap(), "-c", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian package nginx) runs");
        let nginx = Nginx { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen: {}", nginx.errors());
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: nginx's graceful stop; its workers follow their master.
        // SAFETY: kill of the child this test started, by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// The pid in a `worker <id> pid <pid>` body.
fn pid_of(body: &str) -> i32 {
    body.split_whitespace().nth(3).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("bad body {body:?}"))
}

#[test]
fn rolling_reloads_of_each_host_behind_nginx_lose_no_request() {
    let _serial = serial();
    let hosts = [
        PrimaryProcess::start(2, "http", &[("TEST_SIGNALS", "1")]),
        PrimaryProcess::start(2, "http", &[("TEST_SIGNALS", "1")]),
    ];
    let nginx = Nginx::start(&[hosts[0].port, hosts[1].port]);
    // nginx alternates between the hosts; it keeps connections to them open
    // (keepalive), each served by one worker, so it sees a worker per host.
    let before: std::collections::HashSet<i32> = (0..40).map(|_| pid_of(&http_get(nginx.port).unwrap())).collect();
    assert!(before.len() >= 2, "nginx uses both hosts: {before:?}");
    let load = Load::start(nginx.port, 8);
    for _round in 0..3 {
        for host in &hosts {
            host.signal(libc::SIGHUP); // a rolling reload of this host
            std::thread::sleep(Duration::from_millis(700));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let samples = load.finish();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    assert!(samples.len() > 200, "the load ran ({} requests)", samples.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}; nginx: {}",
        failed.len(),
        samples.len(),
        failed.first(),
        nginx.errors()
    );
    let after: std::collections::HashSet<i32> = (0..40).map(|_| pid_of(&http_get(nginx.port).unwrap())).collect();
    assert!(after.is_disjoint(&before), "every worker was replaced: {before:?} -> {after:?}");
}

#[test]
fn a_host_killed_outright_behind_nginx_is_passed_over() {
    let _serial = serial();
    let mut hosts = [
        PrimaryProcess::start(2, "http", &[("TEST_SIGNALS", "1")]),
        PrimaryProcess::start(2, "http", &[("TEST_SIGNALS", "1")]),
    ];
    let nginx = Nginx::start(&[hosts[0].port, hosts[1].port]);
    let load = Load::start(nginx.port, 8);
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    let _ = hosts[0].child.kill(); // SIGKILL: its workers follow it within a second
    let _ = hosts[0].child.wait();
    std::thread::sleep(Duration::from_millis(1500));
    let samples = load.finish();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    // The requests in flight on the killed host when it died may fail (nginx
    // retries a GET on the next upstream when nothing was sent yet); after
    // a second, none does.
    let late: Vec<&&Sample> = failed.iter().filter(|s| s.started > killed_at + Duration::from_secs(1)).collect();
    eprintln!("host killed under load behind nginx: {} of {} requests failed", failed.len(), samples.len());
    assert!(late.is_empty(), "{} requests failed a second after the kill: {:?}", late.len(), late.first());
    assert!(failed.len() <= 16, "{} of {} failed around the kill", failed.len(), samples.len());
    for _ in 0..20 {
        assert!(http_get(nginx.port).is_ok(), "the other host serves everything");
    }
    drop(nginx);
    hosts[1].signal(libc::SIGTERM);
    assert!(hosts[1].wait_exit(Duration::from_secs(15)).success());
}
