//! `rcluster run`: one app in the foreground, for containers and systemd
//! (pm2-runtime, `gunicorn -w`). The library handles the signals (SIGTERM
//! and SIGINT stop gracefully, a second one at once; SIGHUP reloads;
//! SIGTTIN/SIGTTOU add or remove a worker); workers inherit stdout and
//! stderr. Exits 0 after a clean stop.

use std::sync::Arc;
use std::time::Duration;

use crate::app::{App, AppSpec, Hosting};
use crate::cli::RunArgs;
use crate::Res;

pub fn run(args: RunArgs) -> Res<i32> {
    let name = args.name.clone().unwrap_or_else(|| default_name(&args.app.cmd));
    let spec = AppSpec::from_args(&name, &args.app)?;
    let hosting = Hosting {
        handle_signals: true,
        systemd: true,
        log_socket: None,
        say: Arc::new(|app: &str, text: &str| eprintln!("rcluster[{app}]: {text}")),
    };
    let app = App::start(spec, hosting)?;
    for address in &app.addresses {
        // The line scripts (and tests) read the bound port from.
        eprintln!("rcluster[{}]: listening on {address}", app.spec.name);
    }
    while !app.wait_stopped(Duration::from_secs(3600)) {}
    Ok(0)
}

/// The program's file name, as pm2 names apps.
pub fn default_name(cmd: &[String]) -> String {
    let Some(first) = cmd.first() else { return "app".into() };
    let base = first.rsplit('/').next().unwrap_or(first);
    let clean: String = base.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    if clean.is_empty() || clean.starts_with('.') {
        "app".into()
    } else {
        clean
    }
}
