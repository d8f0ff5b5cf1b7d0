//! The command line: `--config FILE` (repeatable), `--version`, `--help`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::config::Sources;

pub enum Command {
    Run(Box<Sources>),
    Check(Box<Sources>),
    Version,
    Help,
}

pub const USAGE: &str = "\
uwsgi-master: a pre-fork HTTPS terminator in the spirit of uWSGI's HTTPS router

usage:
  uwsgi-master --config app.toml     run in the foreground (TOML configuration)
  uwsgi-master --check --config app.toml   validate config, certificates, keys, CAs; exit 0/1
  uwsgi-master --version | --help

signals to the master:
  HUP reload config and certificates   TERM graceful stop   INT/QUIT fast stop
";

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let mut sources = Sources {
        cwd,
        ..Default::default()
    };
    let mut check = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args.next().with_context(|| format!("{name} needs a value")),
            }
        };
        match name.as_str() {
            "--config" | "-c" => sources.files.push(PathBuf::from(value(&name)?)),
            "--version" | "-V" => return Ok(Command::Version),
            "--help" | "-h" => return Ok(Command::Help),
            "--master" => {}
            "--check" => check = true,
            other => bail!("unknown option {other:?} (see --help)"),
        }
    }
    if sources.files.is_empty() {
        bail!("no configuration: use --config app.toml (see --help)");
    }
    if check {
        return Ok(Command::Check(Box::new(sources)));
    }
    Ok(Command::Run(Box::new(sources)))
}
