//! Printing to stdout without panicking: `println!` panics when stdout is closed
//! (`firebreak audit | head`). [`out!`] and [`outp!`] write through [`write`]: a closed
//! pipe is ignored (the command finishes quietly; servers keep serving), and once stdout is
//! gone nothing more is attempted. Any other write error is reported once on stderr.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static GONE: AtomicBool = AtomicBool::new(false);

/// Writes `args` to stdout; see the module.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    if GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let result = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    if let Err(e) = result {
        GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("cannot write to stdout: {e}");
        }
    }
}

/// `println!` that never panics.
#[macro_export]
macro_rules! out {
    () => { $crate::stdout::write(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::stdout::write(format_args!($($arg)*), true) };
}

/// `print!` that never panics.
#[macro_export]
macro_rules! outp {
    ($($arg:tt)*) => { $crate::stdout::write(format_args!($($arg)*), false) };
}
