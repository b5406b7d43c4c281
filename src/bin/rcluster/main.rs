//! `rcluster`: pm2's cluster mode for every language, as a host of the Rust
//! API ([`rcluster::Primary`]). No supervision of its own: restarts, rolling
//! reloads, scaling and graceful stops are the library's.
//!
//! - `rcluster run -i N [--listen ADDR]... -- CMD ARGS...`: a primary in the
//!   foreground (containers, systemd), see `run.rs`;
//! - `rcluster start|ls|reload|restart|stop|delete|scale|logs|describe|kill`:
//!   a per-user daemon answering the CLI over a Unix socket, see `daemon.rs`
//!   and `client.rs`;
//! - `rcluster start FILE.toml`: apps from a config file, see `config.rs`.
//!
//! One file per concept: `cli.rs` (arguments), `app/` (one app: its spec,
//! the primary hosting it, the thread monitoring it), `run.rs`, `daemon.rs`, `client.rs`,
//! `protocol.rs` (CLI <-> daemon), `config.rs`, `logs.rs` (capture,
//! rotation, tail), `exec.rs` (the worker-side trampoline that hands an
//! unmodified program its sockets by the systemd protocol).

mod app;
mod cli;
mod client;
mod config;
mod daemon;
mod exec;
mod logs;
mod protocol;
mod run;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Run(args) => run::run(args),
        cli::Command::Daemon => daemon::serve(),
        cli::Command::ExecWorker(args) => exec::exec_worker(args),
        other => client::main(other),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One line, as every bad input gets.
            eprintln!("rcluster: {}", e.to_string().replace('\n', " "));
            std::process::exit(1);
        }
    }
}

/// The command's error: a message for the user, one line.
#[derive(Debug)]
pub struct Fail(pub String);

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fail {}

impl From<rcluster::Error> for Fail {
    fn from(e: rcluster::Error) -> Fail {
        Fail(e.to_string())
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail(e.to_string())
    }
}

/// `Err(Fail(format!(...)))`.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => { return Err($crate::Fail(format!($($arg)*))) };
}

pub type Res<T> = std::result::Result<T, Fail>;
