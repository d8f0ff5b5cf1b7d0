//! The README quickstart works as written. (SPEC §10)
//!
//! README.md's first fenced code block starts with
//! `PORT=8443 ./contrib/quickstart.sh` (a trailing shell comment is
//! tolerated); we run that line as written, with only the port value
//! replaced, from the repo root and expect the built-in responder on it.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ports::port_is_free;
use common::{free_port, wait_until, watchdog, Curl};

/// The first run builds the release binary.
const BUILD_AND_START: Duration = Duration::from_secs(600);
const LIMIT: Duration = Duration::from_secs(700);
const EXPECTED_PREFIX: &str = "PORT=8443 ./contrib/quickstart.sh";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// First line of the first fenced code block of README.md.
fn first_code_line(readme: &str) -> Option<String> {
    let mut lines = readme.lines();
    lines.find(|l| l.trim_start().starts_with("```"))?;
    lines.next().map(|l| l.trim().to_string())
}

/// The quickstart script's process group; Drop SIGTERMs it, then SIGKILLs
/// it after a deadline.
struct Group {
    child: Child,
    pgid: i32,
    log: PathBuf,
    /// The group is known to be gone (never signal its id again).
    gone: bool,
}

impl Group {
    fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn group_gone(&self) -> bool {
        // SAFETY: kill with signal 0 only checks for existence.
        let r = unsafe { libc::kill(-self.pgid, 0) };
        r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
            || self.only_zombies_left()
    }

    /// Every process still in the group is a zombie (no init reaping here).
    fn only_zombies_left(&self) -> bool {
        self.members().iter().all(|(_, state, _)| state == "Z")
    }

    /// Processes in the group: (pid, state, command line).
    fn members(&self) -> Vec<(i32, String, Vec<String>)> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            if f.get(2).and_then(|p| p.parse::<i32>().ok()) != Some(self.pgid) {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let state = f.first().copied().unwrap_or("?").to_string();
            out.push((pid, state, args));
        }
        out
    }

    /// The folder holding the config file of the group's `uwsgi-master`.
    fn master_config_dir(&self) -> Option<PathBuf> {
        self.members().into_iter().find_map(|(_, _, args)| {
            let is_master = args
                .first()
                .map(|a| a.ends_with("uwsgi-master"))
                .unwrap_or(false);
            let i = args.iter().position(|a| a == "--config")?;
            let cfg = PathBuf::from(args.get(i + 1)?);
            if !is_master {
                return None;
            }
            let cfg = if cfg.is_absolute() {
                cfg
            } else {
                repo().join(cfg)
            };
            cfg.parent().map(Path::to_path_buf)
        })
    }

    fn stop(&mut self, grace: Duration) -> bool {
        if self.gone {
            return true;
        }
        // SAFETY: signalling our own process group by its id.
        unsafe {
            libc::kill(-self.pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            let _ = self.child.try_wait();
            if self.group_gone() {
                self.gone = true;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- quickstart output ----\n{}\n---- end ----", self.log());
        }
        if !self.stop(Duration::from_secs(15)) && !self.gone {
            // SAFETY: as above.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
        common::watchdog::unregister_group(self.pgid);
    }
}

fn spawn_in_group(line: &str, dir: &Path, log: &Path) -> Group {
    let out = std::fs::File::create(log).expect("create quickstart.log");
    let err = out.try_clone().expect("dup quickstart.log");
    let child = Command::new("bash")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .spawn()
        .expect("spawn bash -c <quickstart line>");
    let pgid = child.id() as i32;
    common::watchdog::register_group(pgid);
    Group {
        child,
        pgid,
        log: log.to_path_buf(),
        gone: false,
    }
}

#[test]
fn readme_quickstart_serves_builtin_responder() {
    let _wd = watchdog("readme_quickstart_serves_builtin_responder", LIMIT);
    let root = repo();
    let readme_path = root.join("README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .unwrap_or_else(|e| panic!("README.md must exist at {}: {e}", readme_path.display()));
    let line =
        first_code_line(&readme).unwrap_or_else(|| panic!("README.md has no fenced code block"));
    // Exactly the command; a trailing shell comment is allowed.
    let after = line.strip_prefix(EXPECTED_PREFIX);
    assert!(
        after
            .map(|a| a.is_empty() || (a.starts_with(char::is_whitespace) && a.trim_start().starts_with('#')))
            .unwrap_or(false),
        "README.md's first fenced code block must start with the line `{EXPECTED_PREFIX}`, found `{line}`"
    );
    let script = root.join("contrib/quickstart.sh");
    assert!(script.is_file(), "{} must exist", script.display());

    let port = free_port();
    let rest = line
        .strip_prefix("PORT=8443")
        .expect("line starts with PORT=8443");
    let cmd = format!("PORT={port}{rest}");

    let tmp = tempfile::Builder::new()
        .prefix("uwsgi-e2e-quickstart-")
        .tempdir()
        .expect("temp dir");
    let mut group = spawn_in_group(&cmd, &root, &tmp.path().join("quickstart.log"));

    let url = format!("https://127.0.0.1:{port}/quick?x=1");
    let deadline = Instant::now() + BUILD_AND_START;
    let out = loop {
        if let Ok(Some(st)) = group.child.try_wait() {
            panic!("`{cmd}` exited ({st:?}) before serving on port {port}");
        }
        let out = Curl::new(&url).arg("-k").max_time(10).run();
        if out.status.is_some() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "`{cmd}` did not answer on port {port} within {BUILD_AND_START:?}; last curl: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(out.status, Some(200), "{out:?}");
    let text = out.text();
    assert!(text.contains("built-in responder"), "{out:?}");
    assert!(
        text.contains("request: GET /quick?x=1 HTTP/1.1"),
        "the responder should echo the request line: {out:?}"
    );

    // The folder of the config the script's master runs on (its temp dir).
    let tmpdir = group.master_config_dir();
    assert!(
        tmpdir.is_some(),
        "no `uwsgi-master --config FILE` process found in the quickstart's process group"
    );

    // It stops on SIGTERM (the script is meant for the foreground).
    assert!(
        group.stop(Duration::from_secs(30)),
        "`{cmd}` still running 30 s after SIGTERM to its process group"
    );
    assert!(
        wait_until(Duration::from_secs(10), || port_is_free(port)),
        "port {port} still bound after the quickstart stopped"
    );
    if let Some(dir) = tmpdir {
        assert!(
            !dir.exists(),
            "the quickstart's temp dir {} was not removed on SIGTERM",
            dir.display()
        );
    }
}
