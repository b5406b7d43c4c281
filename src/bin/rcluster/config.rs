//! `rcluster start FILE.toml`: pm2's ecosystem file. Every `[[app]]` table
//! is an app; every key is checked, and an unknown one is an error that
//! names the key, the file and the line.
//!
//! ```toml
//! [[app]]
//! name = "web"
//! cmd = ["uvicorn", "main:app", "--fd", "3"]   # or one string, split at spaces
//! cwd = "."                  # relative to this file; default: this file's directory
//! instances = 4              # or "max"
//! listen = ["127.0.0.1:8080"]
//! policy = "shared"          # rr, least (programs using rcluster), shared, reuseport
//! env = { PYTHONUNBUFFERED = "1" }
//!
//! [app.restart]
//! enabled = true
//! delay = "100ms"            # first restart delay, doubling up to max_delay
//! max_delay = "10s"
//! crash_loop_count = 5       # exits within 30 s that stop restarts
//!
//! [app.reload]
//! grace = "2s"               # --listen apps: how long a replaced worker keeps accepting
//! ready_timeout = "30s"
//! wait_ready = false
//! concurrency = 1
//! stop_timeout = "10s"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::app::{parse_duration, parse_instances, parse_listen, AppSpec};
use crate::{fail, Fail, Res};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    app: Vec<AppTable>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Cmd {
    Line(String),
    Argv(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Instances {
    Count(u32),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppTable {
    name: String,
    cmd: Cmd,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    instances: Option<Instances>,
    #[serde(default)]
    listen: Vec<String>,
    policy: Option<String>,
    restart: Option<RestartTable>,
    reload: Option<ReloadTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartTable {
    enabled: Option<bool>,
    delay: Option<String>,
    max_delay: Option<String>,
    crash_loop_count: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadTable {
    grace: Option<String>,
    ready_timeout: Option<String>,
    wait_ready: Option<bool>,
    concurrency: Option<u32>,
    stop_timeout: Option<String>,
}

/// Reads every app of a config file.
pub fn load(path: &Path) -> Res<Vec<AppSpec>> {
    let text = std::fs::read_to_string(path).map_err(|e| Fail(format!("{}: {e}", path.display())))?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().trim().replace('\n', " ");
        match line {
            Some(line) => Fail(format!("{}:{line}: {message}", path.display())),
            None => Fail(format!("{}: {message}", path.display())),
        }
    })?;
    if file.app.is_empty() {
        fail!("{}: no [[app]] table", path.display());
    }
    let base = std::path::absolute(path)?.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut specs = Vec::new();
    for table in file.app {
        let at = |e: Fail| Fail(format!("{}: app {}: {}", path.display(), table.name, e.0));
        let mut spec = AppSpec { name: table.name.clone(), ..AppSpec::default() };
        spec.cmd = match &table.cmd {
            Cmd::Line(line) => line.split_whitespace().map(str::to_owned).collect(),
            Cmd::Argv(argv) => argv.clone(),
        };
        spec.cwd = Some(match &table.cwd {
            // base/./x -> base/x (`..` is kept: it may cross a symlink)
            Some(cwd) => base.join(cwd).components().filter(|c| *c != std::path::Component::CurDir).collect(),
            None => base.clone(),
        });
        spec.env = table.env.clone();
        spec.instances = match &table.instances {
            None => 1,
            Some(Instances::Count(n)) => parse_instances(&n.to_string()).map_err(at)?,
            Some(Instances::Word(w)) => parse_instances(w).map_err(at)?,
        };
        for (i, listen) in table.listen.iter().enumerate() {
            spec.listen.push(parse_listen(listen, i).map_err(at)?);
        }
        spec.policy = table.policy.clone().unwrap_or_default();
        let ms = |text: &Option<String>, default: u64| -> Res<u64> {
            match text {
                Some(t) => Ok(parse_duration(t)?.as_millis() as u64),
                None => Ok(default),
            }
        };
        if let Some(restart) = &table.restart {
            spec.restart = restart.enabled.unwrap_or(spec.restart);
            spec.restart_delay_ms = ms(&restart.delay, spec.restart_delay_ms).map_err(at)?;
            spec.restart_delay_max_ms = ms(&restart.max_delay, spec.restart_delay_max_ms).map_err(at)?;
            spec.crash_loop_count = restart.crash_loop_count.unwrap_or(spec.crash_loop_count);
        }
        if let Some(reload) = &table.reload {
            spec.reload_grace_ms = ms(&reload.grace, spec.reload_grace_ms).map_err(at)?;
            spec.ready_timeout_ms = ms(&reload.ready_timeout, spec.ready_timeout_ms).map_err(at)?;
            spec.stop_timeout_ms = ms(&reload.stop_timeout, spec.stop_timeout_ms).map_err(at)?;
            spec.wait_ready = reload.wait_ready.unwrap_or(spec.wait_ready);
            spec.reload_concurrency = reload.concurrency.unwrap_or(spec.reload_concurrency);
        }
        spec.validate().map_err(at)?;
        specs.push(spec);
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(name: &str, text: &str) -> Res<Vec<AppSpec>> {
        let dir = std::env::temp_dir().join(format!("rcluster-config-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let result = load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    #[test]
    fn a_full_app_table_sets_every_field() {
        let specs = load_text(
            "full.toml",
            "[[app]]\nname = \"web\"\ncmd = \"true --flag\"\ninstances = 3\nlisten = [\"127.0.0.1:0\"]\n\
             policy = \"reuseport\"\nenv = { A = \"1\" }\n[app.restart]\nenabled = false\ndelay = \"50ms\"\n\
             max_delay = \"1s\"\ncrash_loop_count = 2\n[app.reload]\ngrace = \"300ms\"\nready_timeout = \"5s\"\n\
             wait_ready = true\nconcurrency = 2\nstop_timeout = \"4s\"\n",
        )
        .unwrap();
        let s = &specs[0];
        assert_eq!(s.cmd, ["true", "--flag"]);
        assert_eq!((s.instances, s.policy.as_str(), s.env["A"].as_str()), (3, "reuseport", "1"));
        assert_eq!((s.restart, s.restart_delay_ms, s.restart_delay_max_ms, s.crash_loop_count), (false, 50, 1000, 2));
        assert_eq!((s.reload_grace_ms, s.ready_timeout_ms, s.stop_timeout_ms), (300, 5000, 4000));
        assert_eq!((s.wait_ready, s.reload_concurrency), (true, 2));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let e = load_text("bad.toml", "[[app]]\nname = \"x\"\ncmd = \"true\"\ninstances = \"many\"\n").unwrap_err();
        assert!(e.0.contains("bad.toml: app x: bad instance count"), "{e}");
        let e = load_text("typo.toml", "[[ap]]\nname = \"x\"\n").unwrap_err();
        assert!(e.0.contains("typo.toml:1") && e.0.contains("ap"), "{e}");
        let e = load_text("syntax.toml", "[[app]]\nname = \"x\ncmd = 1\n").unwrap_err();
        assert!(e.0.contains("syntax.toml:2"), "{e}");
        let e = load_text("empty.toml", "").unwrap_err();
        assert!(e.0.contains("no [[app]]"), "{e}");
    }
}
