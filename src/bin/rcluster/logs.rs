//! Workers' output in daemon mode: each worker's stdout and stderr are
//! connections to the daemon's log socket (`exec.rs` makes them), whose
//! lines land in `logs/APP.log` prefixed with the worker id and the stream
//! (`3 out| ...`, `3 err| ...`); the daemon's own notes about the app read
//! `- rcluster| ...`. A file that passes `MAX_BYTES` is renamed `APP.log.1`
//! (the previous `.1` is dropped), so an app's logs take at most twice that.
//! `rcluster logs` reads the files directly (same user).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Res;

/// Rotation threshold of one app's log file (`RCLUSTER_LOG_MAX_BYTES` overrides).
const MAX_BYTES: u64 = 10 * 1024 * 1024;
/// A line longer than this is cut into pieces.
const MAX_LINE: usize = 16 * 1024;

pub fn log_path(home: &Path, app: &str) -> PathBuf {
    home.join("logs").join(format!("{app}.log"))
}

/// One app's log file.
struct AppLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl AppLog {
    fn write_line(&mut self, max: u64, prefix: &str, line: &[u8]) {
        if self.file.is_none() {
            if let Ok(file) = OpenOptions::new().create(true).append(true).open(&self.path) {
                self.size = file.metadata().map_or(0, |m| m.len());
                self.file = Some(file);
            }
        }
        let Some(file) = &mut self.file else { return };
        let mut record = Vec::with_capacity(prefix.len() + line.len() + 1);
        record.extend_from_slice(prefix.as_bytes());
        record.extend_from_slice(line);
        record.push(b'\n');
        if file.write_all(&record).is_ok() {
            self.size += record.len() as u64;
        }
        if self.size >= max {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = std::fs::rename(&self.path, rotated);
            self.file = None;
            self.size = 0;
        }
    }
}

/// Every app's log, shared by the daemon's threads.
#[derive(Clone)]
pub struct Logs {
    home: PathBuf,
    max: u64,
    apps: Arc<Mutex<HashMap<String, Arc<Mutex<AppLog>>>>>,
}

impl Logs {
    pub fn new(home: &Path) -> Logs {
        let max = std::env::var("RCLUSTER_LOG_MAX_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(MAX_BYTES);
        Logs { home: home.to_owned(), max, apps: Arc::default() }
    }

    fn app(&self, app: &str) -> Arc<Mutex<AppLog>> {
        let mut apps = self.apps.lock().unwrap();
        apps.entry(app.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(AppLog { path: log_path(&self.home, app), file: None, size: 0 })))
            .clone()
    }

    /// A note from the daemon about `app`.
    pub fn note(&self, app: &str, text: &str) {
        let stamp = humantime_now();
        self.app(app).lock().unwrap().write_line(self.max, &format!("- rcluster| {stamp} "), text.as_bytes());
    }

    /// Serves the log socket: one thread per worker stream.
    pub fn serve(&self, listener: UnixListener) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let logs = self.clone();
            let _ = std::thread::Builder::new().name("rcluster-log".into()).spawn(move || logs.copy(stream));
        }
    }

    /// Copies one worker stream into its app's file, a line at a time.
    fn copy(&self, stream: UnixStream) {
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() {
            return;
        }
        let mut parts = header.trim_end().splitn(3, '\t');
        let (Some(app), Some(id), Some(kind)) = (parts.next(), parts.next(), parts.next()) else { return };
        let log = self.app(app);
        let prefix = format!("{id} {kind}| ");
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line).unwrap_or_default();
            if n == 0 {
                return;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            log.lock().unwrap().write_line(self.max, &prefix, &line);
        }
    }
}

fn humantime_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}Z")
}

/// Prints the last `lines` lines of the file, then (with `follow`) what
/// is appended, following a rotation.
pub fn tail(path: &Path, lines: usize, follow: bool) -> Res<()> {
    let mut out = std::io::stdout().lock();
    let (mut file, mut position) = match File::open(path) {
        Ok(mut file) => {
            let mut text = Vec::new();
            file.read_to_end(&mut text)?;
            let start = last_lines_start(&text, lines);
            out.write_all(&text[start..])?;
            out.flush()?;
            (Some(file), text.len() as u64)
        }
        Err(_) => (None, 0),
    };
    if !follow {
        return Ok(());
    }
    let mut inode = file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.ino());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(f) = &mut file {
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                position += n as u64;
                out.write_all(&buf[..n])?;
            }
            out.flush()?;
        }
        std::thread::sleep(Duration::from_millis(200));
        // Rotated (a new file at the path) or truncated: start it from the top.
        match std::fs::metadata(path) {
            Ok(meta) if Some(meta.ino()) != inode || meta.len() < position => {
                if let Some(f) = &mut file {
                    // Whatever the old file got after our last read.
                    let mut rest = Vec::new();
                    let _ = f.read_to_end(&mut rest);
                    out.write_all(&rest)?;
                }
                file = File::open(path).ok();
                if let Some(f) = &mut file {
                    f.seek(SeekFrom::Start(0))?;
                }
                inode = Some(meta.ino());
                position = 0;
            }
            _ => {}
        }
    }
}

fn last_lines_start(text: &[u8], lines: usize) -> usize {
    if lines == 0 {
        return text.len();
    }
    let mut seen = 0;
    let end = if text.last() == Some(&b'\n') { text.len() - 1 } else { text.len() };
    for i in (0..end).rev() {
        if text[i] == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}
