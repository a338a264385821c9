//! What a command prints for the person who ran it, on stdout.
//!
//! A reader that went away (`ferry dead list | head`) is not an error: the
//! rest of the output is dropped and the command finishes its work and
//! exits as it would have. `println!` panics there instead (exit 101). Any
//! other failed write (a full disk under `> file`) is logged once, and the
//! output after it is dropped too.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout could not be written: nothing more is tried.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` and a newline to stdout; see the module docs for errors.
pub fn line(args: fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    if let Err(e) = written {
        if !CLOSED.swap(true, Ordering::Relaxed) && e.kind() != io::ErrorKind::BrokenPipe {
            tracing::warn!(error = %e, "stdout cannot be written; the rest of the output is dropped");
        }
    }
}

/// `println!` for commands: a closed stdout drops the line instead of
/// panicking ([`line`]).
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
