//! Where the log goes: stderr, with every failed write ignored.
//!
//! A log line that cannot be written (stderr on a pipe whose reader is
//! gone, a full disk, a log shipper that died) is dropped. The standard
//! `eprintln!` panics on such an error, and `tracing-subscriber` reports
//! its own failed writes with `eprintln!`: a log line written by the
//! signal task then killed that task before it cancelled the run (SIGTERM
//! no longer stopped the process), and one written from librdkafka's log
//! callback aborted the process.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Makes [`Stderr`] writers for `tracing-subscriber`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

/// The process's stderr; writing to it always succeeds, whether or not the
/// bytes got out.
#[derive(Debug)]
pub struct Stderr(io::Stderr);

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr(io::stderr())
    }
}

/// Writes `line` and a newline to stderr, ignoring a failed write (where
/// `eprintln!` would panic).
pub fn eprint_line(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}
