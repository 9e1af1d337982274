use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use numapin::cli::Cli;
use numapin::exit::Exit;

fn main() -> ExitCode {
    // Output piped into `head` ends quietly, as other tools do, instead of
    // failing on a closed stdout.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    init_logging(cli.verbose);
    match numapin::commands::run(cli) {
        Ok(()) => Exit::Ok.into(),
        Err(f) => {
            eprintln!("numapin: {}", numapin::report::error_chain(&*f.error));
            f.exit.into()
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
