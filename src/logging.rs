//! Logging through `log` + `env_logger` on stderr: one line per event, with the pid so
//! master and worker lines can be told apart.

use std::io::Write;

/// Start logging at `info` (or as RUST_LOG says).
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format(|f, record| {
        writeln!(
            f,
            "{} {:<5} [{}] {}",
            f.timestamp_millis(),
            record.level(),
            std::process::id(),
            record.args()
        )
    });
    builder.init();
}

/// Apply the config's `log-level`, unless RUST_LOG was given (it wins: it is the more
/// specific request).
pub fn apply_level(level: Option<log::LevelFilter>) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    log::set_max_level(level.unwrap_or(log::LevelFilter::Info));
}
