//! The command line (clap, derive). The verbs are pm2's; the options of an
//! app are the same for `run` and `start` (and the keys of `config.rs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "rcluster",
    version,
    about = "Run any program as a cluster of workers: a primary owns the sockets, supervises, reloads."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run CMD's workers in the foreground (containers, systemd): SIGTERM/SIGINT
    /// stop, SIGHUP reloads, SIGTTIN/SIGTTOU add or remove a worker.
    Run(RunArgs),
    /// Start an app in the per-user daemon (started if none runs):
    /// `start NAME [OPTIONS] -- CMD ARGS...`, or `start FILE.toml`.
    Start(StartArgs),
    /// List the apps and their workers.
    #[command(alias = "list", alias = "status")]
    Ls {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Rolling reload, no connection lost; returns when it is done or failed.
    Reload { name: String },
    /// Stop the app's workers and start new ones (not rolling: use reload).
    Restart { name: String },
    /// Stop the app's workers gracefully; the app stays listed.
    Stop { name: String },
    /// Stop the app and forget it.
    #[command(alias = "del")]
    Delete { name: String },
    /// Set the number of workers.
    Scale { name: String, instances: u32 },
    /// Print the app's captured output (each line prefixed with its worker id).
    Logs {
        name: String,
        /// Keep printing what is written.
        #[arg(short, long)]
        follow: bool,
        /// How many lines from the end to print first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
    /// Everything about one app.
    #[command(alias = "show")]
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop every app gracefully, then the daemon.
    Kill,
    /// The daemon itself (started by the CLI when needed).
    #[command(hide = true)]
    Daemon,
    /// Worker-side trampoline (see exec.rs).
    #[command(hide = true, name = "exec-worker")]
    ExecWorker(ExecArgs),
}

/// An app's settings, shared by `run` and `start`.
#[derive(Args, Debug, Clone, Default)]
pub struct AppArgs {
    /// Number of workers, or `max` for one per CPU.
    #[arg(short = 'i', long = "instances", value_name = "N|max")]
    pub instances: Option<String>,
    /// Bind this address and give it to every worker by the systemd protocol
    /// (LISTEN_FDS, fds from 3 on), for programs that do not use rcluster.
    /// Repeatable; `NAME=HOST:PORT` names the fd in LISTEN_FDNAMES.
    #[arg(short = 'l', long = "listen", value_name = "[NAME=]HOST:PORT")]
    pub listen: Vec<String>,
    /// rr, least (programs that use rcluster); shared (the default with
    /// --listen), reuseport.
    #[arg(short = 'p', long)]
    pub policy: Option<String>,
    /// Working directory of the workers.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// KEY=VALUE added to the workers' environment (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// With --listen: how long a replacement must have run before the worker
    /// it replaces gets SIGTERM (e.g. 500ms, 2s); set it above the program's
    /// start-up time. Default 2s.
    #[arg(long, value_name = "DURATION")]
    pub reload_grace: Option<String>,
    /// How long a worker asked to stop may take before SIGTERM, then SIGKILL. Default 10s.
    #[arg(long, value_name = "DURATION")]
    pub stop_timeout: Option<String>,
    /// How long a replacement has to become ready during a reload. Default 30s.
    #[arg(long, value_name = "DURATION")]
    pub ready_timeout: Option<String>,
    /// Ready means the worker said so (rcluster's worker `ready()`), not its first listen.
    #[arg(long)]
    pub wait_ready: bool,
    /// Do not restart workers that exit on their own.
    #[arg(long)]
    pub no_restart: bool,
    /// The program and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The app's name in messages.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub app: AppArgs,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// The app's name, or a config file (`*.toml`).
    pub name: String,
    #[command(flatten)]
    pub app: AppArgs,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Addresses (HOST:PORT, already bound by the primary) to ask for and
    /// pass on at fds 3, 4, ...
    #[arg(long = "listen")]
    pub listen: Vec<String>,
    /// Their LISTEN_FDNAMES.
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// The daemon's log socket: stdout and stderr go there.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// The app, for the log socket.
    #[arg(long)]
    pub app: Option<String>,
    #[arg(last = true)]
    pub cmd: Vec<String>,
}
