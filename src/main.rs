//! uwsgi-master: command line, configuration and logging; the master and worker crates do
//! the rest.

mod app;
mod check;
mod cli;
mod config;
mod logging;

use std::process::ExitCode;

fn main() -> ExitCode {
    logging::init();
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    match command {
        cli::Command::Version => {
            println!("uwsgi-master {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        cli::Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        cli::Command::Check(sources) => match check::run(&sources) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("configuration NOT OK: {e:#}");
                ExitCode::FAILURE
            }
        },
        cli::Command::Run(sources) => {
            let mut app = app::App::new(*sources);
            match master::run(&mut app) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("cannot start: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
