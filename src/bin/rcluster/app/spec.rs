//! What the user asked for: [`AppSpec`] (sent from the CLI to the daemon
//! as JSON), its `--listen` addresses, and the parsers of its fields.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcluster::PolicyKind;
use serde::{Deserialize, Serialize};

use crate::cli::AppArgs;
use crate::{fail, Fail, Res};

/// Everything that defines an app. Sent from the CLI to the daemon as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppSpec {
    pub name: String,
    pub cmd: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub instances: u32,
    pub listen: Vec<ListenSpec>,
    pub policy: String,
    pub restart: bool,
    pub restart_delay_ms: u64,
    pub restart_delay_max_ms: u64,
    pub crash_loop_count: u32,
    pub reload_grace_ms: u64,
    pub reload_concurrency: u32,
    pub stop_timeout_ms: u64,
    pub ready_timeout_ms: u64,
    pub wait_ready: bool,
    /// The environment the workers start from instead of this process's:
    /// `rcluster start` sends the CLI's, so an app started from a shell
    /// (an activated virtualenv, a PATH) runs as it would there, not with
    /// the daemon's. Empty: inherit this process's (`run`).
    #[serde(default)]
    pub base_env: BTreeMap<String, String>,
}

/// One `--listen` address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenSpec {
    /// Its name in LISTEN_FDNAMES.
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl Default for AppSpec {
    fn default() -> AppSpec {
        AppSpec {
            name: "app".into(),
            cmd: Vec::new(),
            cwd: None,
            env: BTreeMap::new(),
            instances: 1,
            listen: Vec::new(),
            policy: String::new(),
            restart: true,
            restart_delay_ms: 100,
            restart_delay_max_ms: 10_000,
            crash_loop_count: 5,
            reload_grace_ms: 2000,
            reload_concurrency: 1,
            stop_timeout_ms: 10_000,
            ready_timeout_ms: 30_000,
            wait_ready: false,
            base_env: BTreeMap::new(),
        }
    }
}

/// `N` or `max` (one per CPU).
pub fn parse_instances(text: &str) -> Res<u32> {
    if text == "max" {
        return Ok(std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    }
    match text.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Fail(format!("bad instance count {text:?}: a number from 1, or max"))),
    }
}

/// `500ms`, `2s`, `1.5` (seconds), `1m`.
pub fn parse_duration(text: &str) -> Res<Duration> {
    let (number, unit) = match text.trim() {
        t if t.ends_with("ms") => (&t[..t.len() - 2], 0.001),
        t if t.ends_with('s') => (&t[..t.len() - 1], 1.0),
        t if t.ends_with('m') => (&t[..t.len() - 1], 60.0),
        t => (t, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(Duration::from_secs_f64(v * unit)),
        _ => Err(Fail(format!("bad duration {text:?}: e.g. 500ms, 2s, 1m"))),
    }
}

/// `[NAME=]HOST:PORT`, `[NAME=]PORT` (all interfaces), `[::1]:PORT`.
pub fn parse_listen(text: &str, index: usize) -> Res<ListenSpec> {
    let (name, address) = match text.split_once('=') {
        Some((name, address)) => (name.to_owned(), address),
        None => (format!("listen{index}"), text),
    };
    if name.is_empty() || name.contains(':') || !name.is_ascii() {
        fail!("bad listen name {name:?}: ASCII, no ':'");
    }
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host.trim_start_matches('[').trim_end_matches(']').to_owned(), port),
        None => ("0.0.0.0".to_owned(), address),
    };
    let host = if host.is_empty() { "0.0.0.0".to_owned() } else { host };
    let Ok(port) = port.parse::<u16>() else { fail!("bad listen address {text:?}: HOST:PORT, e.g. 127.0.0.1:8080") };
    rcluster::parse_address(&host, port).map_err(|e| Fail(format!("bad listen address {text:?}: {e}")))?;
    Ok(ListenSpec { name, host, port })
}

impl AppSpec {
    /// Makes the workers start from this process's environment (see `base_env`).
    pub fn capture_env(&mut self) {
        // Not the variables of a protocol between this CLI and whoever started it.
        const NOT_CARRIED: [&str; 6] = [
            rcluster::ENV_WORKER_ID,
            rcluster::ENV_CHANNEL_FD,
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
        ];
        self.base_env = std::env::vars().filter(|(k, _)| !NOT_CARRIED.contains(&k.as_str())).collect();
    }

    /// From the command line (`run`, `start NAME`).
    pub fn from_args(name: &str, args: &AppArgs) -> Res<AppSpec> {
        let mut spec = AppSpec { name: name.to_owned(), cmd: args.cmd.clone(), ..AppSpec::default() };
        if let Some(n) = &args.instances {
            spec.instances = parse_instances(n)?;
        }
        for (i, listen) in args.listen.iter().enumerate() {
            spec.listen.push(parse_listen(listen, i)?);
        }
        spec.policy = args.policy.clone().unwrap_or_default();
        spec.cwd = match &args.cwd {
            Some(cwd) => Some(std::path::absolute(cwd)?),
            None => Some(std::env::current_dir()?),
        };
        for pair in &args.env {
            let Some((key, value)) = pair.split_once('=') else { fail!("bad --env {pair:?}: KEY=VALUE") };
            spec.env.insert(key.to_owned(), value.to_owned());
        }
        if let Some(d) = &args.reload_grace {
            spec.reload_grace_ms = parse_duration(d)?.as_millis() as u64;
        }
        if let Some(d) = &args.stop_timeout {
            spec.stop_timeout_ms = parse_duration(d)?.as_millis() as u64;
        }
        if let Some(d) = &args.ready_timeout {
            spec.ready_timeout_ms = parse_duration(d)?.as_millis() as u64;
        }
        spec.wait_ready = args.wait_ready;
        spec.restart = !args.no_restart;
        Ok(spec)
    }

    /// The policy, defaulted by the way connections are given.
    pub fn policy(&self) -> Res<PolicyKind> {
        if self.policy.is_empty() {
            return Ok(if self.listen.is_empty() { PolicyKind::RoundRobin } else { PolicyKind::Shared });
        }
        let policy = PolicyKind::from_name(&self.policy)?;
        if !self.listen.is_empty()
            && matches!(policy, PolicyKind::RoundRobin | PolicyKind::LeastLoaded | PolicyKind::Hybrid)
        {
            fail!(
                "--policy {} needs a program that uses rcluster; with --listen the workers accept themselves (shared or reuseport)",
                self.policy
            );
        }
        Ok(policy)
    }

    /// Checks what can be checked before anything starts.
    pub fn validate(&self) -> Res<()> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            fail!("bad app name {:?}: letters, digits, '-', '_', '.'", self.name);
        }
        if self.cmd.is_empty() {
            fail!("missing command: give it after `--`, e.g. rcluster run -i 2 -- python3 app.py");
        }
        if self.instances == 0 {
            fail!("instances must be at least 1");
        }
        self.policy()?;
        if let Some(cwd) = &self.cwd {
            if !cwd.is_dir() {
                fail!("working directory {} does not exist", cwd.display());
            }
        }
        let path = self.env.get("PATH").or_else(|| self.base_env.get("PATH"));
        find_program(&self.cmd[0], self.cwd.as_deref(), path.map(String::as_str))?;
        Ok(())
    }
}

/// Where `program` would be run from, or a one-line error.
fn find_program(program: &str, cwd: Option<&Path>, path: Option<&str>) -> Res<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let full = match cwd {
            Some(cwd) => cwd.join(program),
            None => PathBuf::from(program),
        };
        if executable(&full) {
            return Ok(full);
        }
        fail!("command not found or not executable: {program}");
    }
    let path = path.map(str::to_owned).or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let full = Path::new(dir).join(program);
        if executable(&full) {
            return Ok(full);
        }
    }
    fail!("command not found: {program}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_with_names_ports_and_ipv6() {
        let l = parse_listen("127.0.0.1:8080", 0).unwrap();
        assert_eq!((l.name.as_str(), l.host.as_str(), l.port), ("listen0", "127.0.0.1", 8080));
        let l = parse_listen("web=[::1]:0", 1).unwrap();
        assert_eq!((l.name.as_str(), l.host.as_str(), l.port), ("web", "::1", 0));
        let l = parse_listen("9000", 2).unwrap();
        assert_eq!((l.host.as_str(), l.port), ("0.0.0.0", 9000));
        assert!(parse_listen("example.com:80", 0).is_err(), "names are not resolved");
        assert!(parse_listen("127.0.0.1:99999", 0).is_err());
        assert!(parse_listen("a:b=127.0.0.1:1", 0).is_err(), "':' separates LISTEN_FDNAMES");
    }

    #[test]
    fn durations_and_instance_counts_parse_or_say_why() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_instances("3").unwrap(), 3);
        assert!(parse_instances("max").unwrap() >= 1);
        assert!(parse_instances("0").is_err());
    }

    #[test]
    fn policies_default_by_route_and_rr_is_refused_with_inherited_sockets() {
        let mut spec = AppSpec { cmd: vec!["true".into()], ..AppSpec::default() };
        assert_eq!(spec.policy().unwrap(), PolicyKind::RoundRobin);
        spec.listen.push(parse_listen("127.0.0.1:0", 0).unwrap());
        assert_eq!(spec.policy().unwrap(), PolicyKind::Shared);
        spec.policy = "reuseport".into();
        assert_eq!(spec.policy().unwrap(), PolicyKind::ReusePort);
        spec.policy = "rr".into();
        assert!(spec.policy().is_err());
        spec.policy = "fastest".into();
        assert!(spec.policy().is_err());
    }
}
