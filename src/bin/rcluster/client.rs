//! The CLI side of daemon mode: each verb is one request (`protocol.rs`);
//! `start` starts the daemon first when none runs.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::AppSpec;
use crate::cli::Command;
use crate::protocol::{call, connect, ensure_home, Request, Response, Unreachable};
use crate::{config, fail, logs, Fail, Res};

/// How long a freshly started daemon has to answer.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(10);

pub fn main(command: Command) -> Res<i32> {
    match command {
        Command::Start(args) => {
            let mut specs = if args.name.ends_with(".toml") && args.app.cmd.is_empty() {
                config::load(Path::new(&args.name))?
            } else {
                let spec = AppSpec::from_args(&args.name, &args.app)?;
                spec.validate()?;
                vec![spec]
            };
            for spec in &mut specs {
                spec.capture_env();
            }
            let stream = match connect() {
                Ok(stream) => stream,
                Err(Unreachable::NoDaemon | Unreachable::Stale) => start_daemon()?,
                Err(e) => fail!("{}", e.message()),
            };
            print_message(call(stream, &Request::Start { apps: specs })?)
        }
        Command::Ls { json } => {
            let response = request(&Request::Ls)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&response.data).unwrap_or_default());
                return Ok(0);
            }
            print_table(&response.data);
            Ok(0)
        }
        Command::Reload { name } => print_message(request(&Request::Reload { name })?),
        Command::Restart { name } => print_message(request(&Request::Restart { name })?),
        Command::Stop { name } => print_message(request(&Request::Stop { name })?),
        Command::Delete { name } => print_message(request(&Request::Delete { name })?),
        Command::Scale { name, instances } => print_message(request(&Request::Scale { name, instances })?),
        Command::Describe { name, json } => {
            let response = request(&Request::Describe { name })?;
            if !response.ok {
                return print_message(response);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&response.data).unwrap_or_default());
            } else {
                print_description(&response.data);
            }
            Ok(0)
        }
        Command::Logs { name, follow, lines } => {
            let response = request(&Request::Describe { name })?;
            if !response.ok {
                return print_message(response);
            }
            let path = response.data["log"].as_str().unwrap_or_default().to_owned();
            logs::tail(Path::new(&path), lines, follow)?;
            Ok(0)
        }
        Command::Kill => print_message(request(&Request::Kill)?),
        Command::Run(_) | Command::Daemon | Command::ExecWorker(_) => unreachable!("handled in main"),
    }
}

/// One request to a running daemon.
fn request(request: &Request) -> Res<Response> {
    match connect() {
        Ok(stream) => call(stream, request),
        Err(e) => Err(Fail(e.message())),
    }
}

/// Prints the daemon's answer: the message on stdout, or the error as one line.
fn print_message(response: Response) -> Res<i32> {
    if !response.ok {
        return Err(Fail(response.message));
    }
    if !response.message.is_empty() {
        println!("{}", response.message);
    }
    Ok(0)
}

/// Starts the daemon in its own session, output to `daemon.log`, and
/// waits until it answers.
fn start_daemon() -> Res<std::os::unix::net::UnixStream> {
    let home = ensure_home()?;
    let log = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(home.join("daemon.log"))?;
    let me = std::env::current_exe()?;
    let mut command = std::process::Command::new(me);
    command.arg("daemon").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // The daemon is no one's socket-activated service.
    for variable in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"] {
        command.env_remove(variable);
    }
    // SAFETY: setsid is async-signal-safe; the daemon leaves our session
    // and process group, so a Ctrl-C or a closed terminal does not reach it.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| Fail(format!("starting the daemon: {e}")))?;
    let deadline = Instant::now() + DAEMON_START_TIMEOUT;
    loop {
        if let Ok(stream) = connect() {
            // Reaped when this process exits; the daemon outlives us.
            std::mem::forget(child);
            return Ok(stream);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Lost a race to another daemon? Then it answers.
            if let Ok(stream) = connect() {
                return Ok(stream);
            }
            let text = std::fs::read_to_string(home.join("daemon.log")).unwrap_or_default();
            let last = text.lines().last().unwrap_or("").trim_start_matches("rcluster: ");
            fail!("the daemon did not start ({status}): {last}");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            fail!("the daemon did not answer within {DAEMON_START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn print_table(data: &Value) {
    let header = ["APP", "ID", "PID", "STATE", "RESTARTS", "UPTIME", "CPU", "MEM", "CONNS"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for app in data["apps"].as_array().into_iter().flatten() {
        let name = app["name"].as_str().unwrap_or("?").to_owned();
        let workers = app["workers"].as_array().cloned().unwrap_or_default();
        if workers.is_empty() {
            let status = app["status"].as_str().unwrap_or("?").to_owned();
            rows.push(vec![
                name,
                "-".into(),
                "-".into(),
                status,
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            continue;
        }
        for w in workers {
            rows.push(vec![
                name.clone(),
                w["id"].to_string(),
                w["pid"].to_string(),
                w["state"].as_str().unwrap_or("?").to_owned(),
                w["restarts"].to_string(),
                human_duration(w["uptime_ms"].as_u64().unwrap_or(0)),
                format!("{:.1}%", w["cpu_percent"].as_f64().unwrap_or(0.0)),
                human_bytes(w["rss_bytes"].as_u64().unwrap_or(0)),
                w["dispatched"].to_string(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..header.len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

fn print_description(data: &Value) {
    let spec = &data["spec"];
    let list = |v: &Value| {
        v.as_array().into_iter().flatten().map(|x| x.as_str().map_or(x.to_string(), str::to_owned)).collect::<Vec<_>>()
    };
    println!("name:       {}", data["name"].as_str().unwrap_or("?"));
    println!("status:     {}", data["status"].as_str().unwrap_or("?"));
    println!("command:    {}", list(&spec["cmd"]).join(" "));
    println!("cwd:        {}", spec["cwd"].as_str().unwrap_or("-"));
    println!("instances:  {}", data["instances"]);
    let listen = list(&data["listen"]);
    let policy =
        spec["policy"].as_str().filter(|p| !p.is_empty()).unwrap_or(if listen.is_empty() { "rr" } else { "shared" });
    println!(
        "listen:     {}",
        if listen.is_empty() { "- (the program's own listen)".into() } else { listen.join(" ") }
    );
    println!("policy:     {policy}");
    println!("crashes:    {}", data["crashes"]);
    println!("log:        {}", data["log"].as_str().unwrap_or("-"));
    for (key, value) in spec["env"].as_object().into_iter().flatten() {
        println!("env:        {key}={}", value.as_str().unwrap_or(""));
    }
    for w in data["workers"].as_array().into_iter().flatten() {
        println!(
            "worker {}:   pid {}, {}, generation {}, restarts {}, up {}, cpu {:.1}%, mem {}, conns {}",
            w["id"],
            w["pid"],
            w["state"].as_str().unwrap_or("?"),
            w["generation"],
            w["restarts"],
            human_duration(w["uptime_ms"].as_u64().unwrap_or(0)),
            w["cpu_percent"].as_f64().unwrap_or(0.0),
            human_bytes(w["rss_bytes"].as_u64().unwrap_or(0)),
            w["dispatched"],
        );
    }
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..=1023 => format!("{bytes}B"),
        1024..=1_048_575 => format!("{:.1}K", bytes as f64 / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1}M", bytes as f64 / 1_048_576.0),
        _ => format!("{:.1}G", bytes as f64 / 1_073_741_824.0),
    }
}
