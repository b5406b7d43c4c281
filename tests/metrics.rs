//! The primary's numbers (issue #22, point 3): per worker and per primary,
//! CPU time and memory from /proc, through the stats API and the opt-in
//! Prometheus endpoint, whose text a real parser reads (prometheus_client's,
//! from the test venv); /healthz; and `max_memory`, which recycles a worker
//! that grew too big without failing a request.

mod common;
use common::*;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// GET `path` on `port`: (status code, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// Every sample of a Prometheus text exposition, parsed by
/// prometheus_client's own parser: `name{label="v",...}` (labels sorted) -> value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the test venv's python (make python installs it, with prometheus_client)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "prometheus_client could not parse it: {}", String::from_utf8_lossy(&out.stderr));
    let parsed: HashMap<String, serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    parsed.into_iter().map(|(k, v)| (k, v.as_f64().unwrap())).collect()
}

#[test]
fn the_metrics_endpoint_speaks_prometheus_and_healthz_says_if_it_serves() {
    let _serial = serial();
    let metrics_port = free_port();
    let address = format!("127.0.0.1:{metrics_port}");
    let primary = PrimaryProcess::start(2, "http", &[("TEST_METRICS", &address)]);
    for _ in 0..30 {
        http_get(primary.port).unwrap();
    }
    let (status, text) = get(metrics_port, "/metrics");
    assert_eq!(status, 200, "{text}");
    let samples = parse_prometheus(&text);
    let value = |key: &str| *samples.get(key).unwrap_or_else(|| panic!("no {key} in:\n{text}"));
    assert_eq!(value(r#"rcluster_workers{state="listening"}"#), 2.0);
    assert_eq!(value("rcluster_serving{}"), 1.0);
    assert_eq!(value("rcluster_listeners{}"), 1.0);
    assert!(value("rcluster_primary_resident_memory_bytes{}") > 1e6);
    let per_worker = |name: &str| -> Vec<f64> {
        samples.iter().filter(|(k, _)| k.starts_with(&format!("{name}{{"))).map(|(_, v)| *v).collect()
    };
    let dispatched = per_worker("rcluster_worker_dispatched_connections_total");
    assert_eq!(dispatched.len(), 2, "one sample per worker");
    assert!(dispatched.iter().sum::<f64>() >= 30.0, "{dispatched:?}");
    assert!(per_worker("rcluster_worker_resident_memory_bytes").iter().all(|&rss| rss > 1e5));
    assert!(per_worker("rcluster_worker_cpu_seconds_total").iter().all(|&cpu| cpu >= 0.0));
    assert_eq!(get(metrics_port, "/healthz").0, 200);
    assert_eq!(get(metrics_port, "/nothing").0, 404);

    // A primary with no worker listening does not serve: 503.
    let idle_port = free_port();
    let idle = PrimaryProcess::start(0, "http", &[("TEST_METRICS", &format!("127.0.0.1:{idle_port}"))]);
    assert_eq!(get(idle_port, "/healthz").0, 503);
    drop(idle);
}

#[test]
fn a_metrics_address_in_use_is_a_clear_error() {
    let _serial = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(TESTWORKER)
        .args(["primary", "1", "http"])
        .env("TEST_METRICS", &address)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot serve metrics on") && stderr.contains("in use"), "{stderr}");
}

#[test]
fn stats_carry_cpu_memory_and_messages() {
    let _serial = serial();
    let mut p = TestPrimary::new("echo", &[], RCLUSTER_POLICY_RR);
    let (worker, _) = p.fork();
    p.wait_for(Duration::from_secs(10), "online", |e| e.kind == RCLUSTER_EVENT_ONLINE);
    for _ in 0..3 {
        ok(rcluster_primary_send(p.handle, worker, b"x".as_ptr() as *const _, 1), "send");
        p.wait_for(Duration::from_secs(10), "echo", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
    }
    let mut usage: rcluster_worker_usage = unsafe { std::mem::zeroed() };
    usage.struct_size = std::mem::size_of::<rcluster_worker_usage>();
    ok(rcluster_primary_worker_usage(p.handle, worker, &mut usage), "worker_usage");
    assert_eq!((usage.messages_in, usage.messages_out), (3, 3));
    assert!(usage.rss_bytes > 100_000, "{usage:?}");
    let mut metrics: rcluster_metrics = unsafe { std::mem::zeroed() };
    metrics.struct_size = std::mem::size_of::<rcluster_metrics>();
    ok(rcluster_primary_metrics(p.handle, &mut metrics), "metrics");
    assert_eq!((metrics.workers, metrics.serving), (1, 0), "an echo worker listens on nothing: {metrics:?}");
    assert!(metrics.rss_bytes > 1_000_000 && metrics.workers_rss_bytes > 100_000, "{metrics:?}");
    // A caller that knows an older, smaller struct gets only what it has room for.
    let mut small = [0usize; 2];
    small[0] = 2 * std::mem::size_of::<usize>();
    ok(rcluster_primary_metrics(p.handle, small.as_mut_ptr() as *mut rcluster_metrics), "metrics (small)");
    assert_eq!(small[0], 2 * std::mem::size_of::<usize>(), "its size is left as it was");
}

#[test]
fn a_worker_past_max_memory_is_recycled_without_a_failed_request() {
    let _serial = serial();
    let env = [("TEST_GROW_WORKER", "1"), ("TEST_GROW_MB", "160")];
    let mut p = TestPrimary::with("http", &env, |o| o.max_memory_mb = 96);
    let port = p.start(2);
    let load = Load::start(port, 4);
    let replacement = p.wait_for(Duration::from_secs(15), "worker 1's replacement", |e| {
        e.kind == RCLUSTER_EVENT_FORK && e.slot == 0 && e.worker > 2
    });
    let exit =
        p.wait_for(Duration::from_secs(15), "worker 1 leaving", |e| e.kind == RCLUSTER_EVENT_EXIT && e.worker == 1);
    assert_eq!(exit.exit_code, 0, "it left gracefully");
    assert_ne!(exit.flags & RCLUSTER_EXIT_AFTER_DISCONNECT, 0);
    std::thread::sleep(Duration::from_millis(1500)); // the replacement is small: it stays
    let samples = load.finish();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    assert!(failed.is_empty(), "{} of {} failed: {:?}", failed.len(), samples.len(), failed.first());
    let forks = p.seen.iter().filter(|e| e.kind == RCLUSTER_EVENT_FORK).count();
    assert_eq!(forks, 3, "one replacement only (worker {}): {:?}", replacement.worker, p.seen);
}
