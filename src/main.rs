use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use numapin::cli::Cli;
use numapin::exit::Exit;

fn main() -> ExitCode {
    // SIGPIPE stays ignored, as Rust's runtime leaves it. libvirt's client
    // writes to its socket with plain write(2): with the default disposition
    // a libvirtd restarted under a running numapin killed it with SIGPIPE
    // (found by the chaos soak) instead of failing one call as unreachable.
    // Output piped into `head` still ends quietly: `print_out` treats EPIPE
    // on stdout as the reader having gone away.
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
    let daemon = matches!(cli.command, numapin::cli::Command::Run { .. });
    init_logging(cli.verbose, daemon);
    let exit = match numapin::commands::run(cli) {
        Ok(()) => Exit::Ok,
        Err(f) => {
            // Not eprintln!, which panics when stderr cannot be written.
            let _ = writeln!(
                std::io::stderr(),
                "numapin: {}",
                numapin::report::error_chain(&*f.error)
            );
            f.exit
        }
    };
    leave(exit)
}

/// Ends the process without the C library's exit handlers. The command's
/// libvirt connection closes on a thread of its own once the command drops
/// it, and libvirt's global teardown in `exit()` racing that close
/// corrupted the heap now and then ("malloc_consolidate(): invalid chunk
/// size", about one run in several hundred). Everything numapin must leave
/// behind is already written and synced (journal, placements, pid file);
/// only the standard streams need flushing.
fn leave(exit: Exit) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(exit as u8 as i32) }
}

/// Logs go to stderr. The daemon logs its decisions at info by default;
/// one-shot commands only warnings. Under systemd (JOURNAL_STREAM set) the
/// journal adds timestamps itself, and colours are only for terminals.
fn init_logging(verbose: u8, daemon: bool) {
    let default = match verbose + u8::from(daemon) {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
