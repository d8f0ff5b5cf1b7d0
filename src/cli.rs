//! The command line: `--config FILE` and `--ini FILE[:section]` (repeatable, in order), and
//! uWSGI-style flags for every configuration key (`--https X`, `--uid=nobody`, `--master`),
//! which override the files.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::config::{self, Setting, SourceFile, Sources};

pub enum Command {
    Run(Box<Sources>),
    Check(Box<Sources>),
    Version,
    Help,
}

pub const USAGE: &str = "\
uwsgi-master: a pre-fork HTTPS terminator in the spirit of uWSGI's HTTPS router

usage:
  uwsgi-master --config app.toml           run in the foreground (TOML configuration)
  uwsgi-master --ini uwsgi.ini[:section]   the [uwsgi] (or named) section of a uWSGI ini
  uwsgi-master --master --https 0.0.0.0:8443,foobar.crt,foobar.key   uWSGI-style flags
  uwsgi-master --check --config app.toml   validate config, certificates, keys, CAs; exit 0/1
  uwsgi-master --version | --help

--config and --ini may be repeated and mixed: later files win. Every configuration key is
also a flag, --KEY VALUE or --KEY=VALUE, applied after the files (a flag replaces the key
it names, lists included); list keys (--https, --shared-socket, --http-to,
--http-to-https) may be repeated. Switches (--master, --https-export-cert,
--master-as-root) take no value, or =true/=false. Examples:
  --shared-socket 0.0.0.0:443 --uid www-data --gid www-data --https =0,foobar.crt,foobar.key
  --http-to /run/app.sock --processes 4 --threads 64 --http-to-https 0.0.0.0:80
uWSGI options this product does not have are refused, all of them in one error.

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
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        let (name, inline) = match split_option(&arg) {
            Some(parts) => parts,
            None => {
                // uWSGI loads a lone file argument by its extension.
                match arg.rsplit_once('.').map(|(_, ext)| ext) {
                    Some("ini") => sources.files.push(SourceFile::ini(&arg)),
                    Some("toml") => sources.files.push(SourceFile::Toml(arg.into())),
                    _ => bail!("unexpected argument {arg:?} (see --help)"),
                }
                continue;
            }
        };
        let mut value = |what: &str| -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args
                    .next_if(|next| !next.starts_with("--"))
                    .with_context(|| format!("--{name} needs {what}")),
            }
        };
        match name.as_str() {
            "config" => sources
                .files
                .push(SourceFile::Toml(PathBuf::from(value("a file")?))),
            "ini" => sources.files.push(SourceFile::ini(&value("a file")?)),
            "version" => return Ok(Command::Version),
            "help" => return Ok(Command::Help),
            "check" => check = true,
            key => {
                // A switch never takes the next argument; an option we do not know takes
                // it when it does not look like an option itself.
                let takes_value = config::flag_takes_value(key)
                    .unwrap_or_else(|| args.peek().is_some_and(|next| !next.starts_with('-')));
                let value = match inline {
                    Some(v) => Some(v),
                    None if takes_value => args.next_if(|next| !next.starts_with("--")),
                    None => None,
                };
                sources.flags.push(Setting::flag(key, value.as_deref()));
            }
        }
    }
    if sources.files.is_empty() && sources.flags.is_empty() {
        bail!("no configuration: use --config app.toml, --ini uwsgi.ini or flags (see --help)");
    }
    if check {
        return Ok(Command::Check(Box::new(sources)));
    }
    Ok(Command::Run(Box::new(sources)))
}

/// `--name`, `--name=value`, `-c`/`-V`/`-h`, and uWSGI's one-letter options (`-p 4`,
/// `-p4`, `-M`) as their long names. None: not an option.
fn split_option(arg: &str) -> Option<(String, Option<String>)> {
    if let Some(long) = arg.strip_prefix("--") {
        if long.is_empty() {
            return None;
        }
        return Some(match long.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (long.to_string(), None),
        });
    }
    let short = arg.strip_prefix('-')?;
    let mut chars = short.chars();
    let letter = chars.next()?;
    let rest = chars.as_str();
    let name = match letter {
        'c' => "config",
        'V' => "version",
        'h' => "help",
        other => config::short_option(other).unwrap_or(short),
    };
    if name == short {
        // An unknown short option: report it by what was written.
        return Some((short.to_string(), None));
    }
    Some((
        name.to_string(),
        (!rest.is_empty()).then(|| rest.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Sources {
        match parse(args.iter().map(|s| s.to_string())) {
            Ok(Command::Run(s)) => *s,
            Ok(_) => panic!("not a run"),
            Err(e) => panic!("{e:#}"),
        }
    }

    fn flags(s: &Sources) -> Vec<(String, Option<String>)> {
        s.flags
            .iter()
            .map(|f| (f.key.clone(), f.value.clone()))
            .collect()
    }

    fn pair(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.to_string(), v.map(str::to_string))
    }

    #[test]
    fn the_seed_commands() {
        let s = run(&["--master", "--https", "0.0.0.0:8443,foobar.crt,foobar.key"]);
        assert!(s.files.is_empty());
        assert_eq!(
            flags(&s),
            [
                pair("master", None),
                pair("https", Some("0.0.0.0:8443,foobar.crt,foobar.key"))
            ]
        );
        let s = run(&[
            "--shared-socket",
            "0.0.0.0:443",
            "--uid",
            "roberto",
            "--gid",
            "roberto",
            "--https",
            "=0,foobar.crt,foobar.key",
        ]);
        assert_eq!(flags(&s)[2], pair("gid", Some("roberto")));
        assert_eq!(
            flags(&s)[3],
            pair("https", Some("=0,foobar.crt,foobar.key"))
        );
    }

    #[test]
    fn inline_values_switches_and_shorts() {
        let s = run(&[
            "--https==0,a.crt,a.key",
            "--master=false",
            "-p",
            "4",
            "-M",
            "-l128",
            "--https-export-cert",
            "--processes=2",
        ]);
        assert_eq!(
            flags(&s),
            [
                pair("https", Some("=0,a.crt,a.key")),
                pair("master", Some("false")),
                pair("processes", Some("4")),
                pair("master", None),
                pair("listen", Some("128")),
                pair("https-export-cert", None),
                pair("processes", Some("2")),
            ]
        );
    }

    #[test]
    fn files_in_order() {
        let s = run(&[
            "--config",
            "a.toml",
            "--ini",
            "b.ini:prod",
            "c.ini",
            "-c",
            "d.toml",
            "--ini=e.ini",
        ]);
        assert_eq!(
            s.files,
            [
                SourceFile::Toml("a.toml".into()),
                SourceFile::Ini {
                    path: "b.ini".into(),
                    section: "prod".into()
                },
                SourceFile::ini("c.ini"),
                SourceFile::Toml("d.toml".into()),
                SourceFile::ini("e.ini"),
            ]
        );
    }

    #[test]
    fn unsupported_options_keep_their_values_apart() {
        // wsgi-file takes a value, enable-threads does not, and an option nobody knows
        // takes the next word unless it looks like an option.
        let s = run(&[
            "--wsgi-file",
            "app.py",
            "--enable-threads",
            "--bogus",
            "x",
            "--bogus2",
            "--master",
        ]);
        assert_eq!(
            flags(&s),
            [
                pair("wsgi-file", Some("app.py")),
                pair("enable-threads", None),
                pair("bogus", Some("x")),
                pair("bogus2", None),
                pair("master", None),
            ]
        );
    }

    #[test]
    fn errors() {
        let e = |args: &[&str]| match parse(args.iter().map(|s| s.to_string())) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("accepted {args:?}"),
        };
        assert!(e(&[]).contains("no configuration"));
        assert!(e(&["stray"]).contains("stray"));
        assert!(e(&["--config"]).contains("--config needs a file"));
        // A value-taking flag at the end is kept, and refused later with its name.
        let s = run(&["--uid"]);
        assert_eq!(flags(&s), [pair("uid", None)]);
    }
}
