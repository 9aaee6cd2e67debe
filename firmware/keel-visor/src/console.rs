//! The visor console (UART0). Every line starts with the monotonic time and its source:
//! `[    1.234567 visor] ...` for the visor, `[    1.234567 app:I] ...` for app logs.

use core::fmt::{self, Write};

use crate::{board, time};

/// A writer to the console UART that turns `\n` into `\r\n`.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                board::uart::putc(b'\r');
            }
            board::uart::putc(b);
        }
        Ok(())
    }
}

/// Writes the line prefix for `source`.
pub fn prefix(source: &str) {
    let t = time::now_us();
    let _ = write!(Console, "[{:5}.{:06} {}] ", t / 1_000_000, t % 1_000_000, source);
}

/// Writes the line prefix for `source` without the time: for the last lines of a fatal fault or
/// a panic, which may have interrupted a clock read (reading it again would panic in a loop).
pub fn prefix_untimed(source: &str) {
    let _ = write!(Console, "[     -.------ {}] ", source);
}

/// Writes raw app bytes, replacing anything that is not printable ASCII with `?`.
pub fn write_sanitised(bytes: &[u8]) {
    for &b in bytes {
        board::uart::putc(if (0x20..0x7F).contains(&b) || b == b'\t' { b } else { b'?' });
    }
}

/// Logs one visor line.
#[macro_export]
macro_rules! vlog {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        $crate::board::critical(|| {
            $crate::console::prefix("visor");
            let _ = writeln!($crate::console::Console, $($arg)*);
        })
    }};
}

/// Logs one visor line without reading the clock ([`prefix_untimed`]): fatal faults and panics.
#[macro_export]
macro_rules! vlog_untimed {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        $crate::board::critical(|| {
            $crate::console::prefix_untimed("visor");
            let _ = writeln!($crate::console::Console, $($arg)*);
        })
    }};
}

/// Writes a byte slice as lowercase hex.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{:02x}", b)?;
        }
        Ok(())
    }
}

/// Logs the longest stretch the visor kept interrupts masked since boot, in instructions as
/// `-icount shift=0` counts them (1 ns each), which is what the bench reads:
/// `masked: max_instructions=N`. Only `measure` builds (the bench) measure it; others print
/// nothing.
pub fn log_masked_max() {
    #[cfg(feature = "measure")]
    {
        let instructions = board::masked_max_cycles() as u64 * 1_000_000_000 / board::SYSCLK_HZ as u64;
        crate::vlog!("masked: max_instructions={}", instructions);
    }
}
