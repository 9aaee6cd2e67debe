//! `keel crash`: the crash dumps devices sent (registers, fault status and the top of the app's
//! stack), listed, shown, and served to gdb read-only for a post-mortem session: `bt`,
//! `info registers` and `print` of stack variables on a crash from the field.

use std::collections::VecDeque;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use keel_api::CrashJson;
use keel_debug::wire::{Op, Regs, Status, Stop, StopReason, NREGS};

use crate::client::{print_json, Conn};
use crate::debug::elf::CodeImage;
use crate::debug::probe::{DeviceEvent, OpOutcome, Probe, ProbeError};

/// `keel crash ...`.
#[derive(Subcommand)]
pub enum CrashCmd {
    /// List a device's crash dumps, newest first.
    List {
        #[command(flatten)]
        conn: Conn,
        /// The device.
        device: String,
    },
    /// Show one crash dump (the newest by default); `--gdb` serves it to gdb for a post-mortem
    /// session:
    ///   keel crash show DEVICE --gdb --elf app.elf
    ///   gdb-multiarch app.elf -ex 'target remote :8001' -ex bt
    #[command(verbatim_doc_comment)]
    Show(ShowArgs),
}

/// `keel crash show`.
#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    conn: Conn,
    /// The device.
    device: String,
    /// The crash id (`cr-...`, see `keel crash list`) [default: the newest].
    id: Option<String>,
    /// The newest crash (the default; for scripts that want to say so).
    #[arg(long, conflicts_with = "id")]
    last: bool,
    /// Serve the crash to gdb on 127.0.0.1:PORT, read-only, until gdb detaches.
    #[arg(long)]
    gdb: bool,
    /// The ELF file of the app that crashed (needed with --gdb: code bytes come from it).
    #[arg(long, required_if_eq("gdb", "true"))]
    elf: Option<PathBuf>,
    /// TCP port for gdb (0: any free port).
    #[arg(long, default_value_t = 8001)]
    port: u16,
}

/// `keel crash ...`.
pub fn command(cmd: CrashCmd, json: bool) -> Result<(), String> {
    match cmd {
        CrashCmd::List { conn, device } => {
            let list = conn.client()?.crashes(&device).map_err(|e| e.to_string())?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no crashes stored for {device}");
            }
            for c in list {
                println!(
                    "{}  {:<11} pc={:#010x} lr={:#010x} sp={:#010x} {} {} ({} stack bytes)",
                    c.id,
                    c.kind,
                    c.pc,
                    c.lr,
                    c.sp,
                    c.app_name.as_deref().unwrap_or("?"),
                    c.app_version.as_deref().unwrap_or("?"),
                    c.stack_bytes
                );
            }
            Ok(())
        }
        CrashCmd::Show(a) => show(a, json),
    }
}

fn show(a: ShowArgs, json: bool) -> Result<(), String> {
    let api = a.conn.client()?;
    let id = match a.id {
        Some(id) => id,
        None => {
            let list = api.crashes(&a.device).map_err(|e| e.to_string())?;
            list.first().map(|c| c.id.clone()).ok_or_else(|| format!("no crashes stored for {}", a.device))?
        }
    };
    let crash = api.crash(&a.device, &id).map_err(|e| e.to_string())?;
    if !a.gdb {
        if json {
            return print_json(&crash);
        }
        print_crash(&crash);
        return Ok(());
    }
    let elf = a.elf.as_ref().ok_or("--gdb needs --elf APP.elf (the app that crashed)")?;
    let bytes = std::fs::read(elf).map_err(|e| format!("cannot read {}: {e}", elf.display()))?;
    let code = CodeImage::from_elf(&bytes).map_err(|e| format!("{}: {e}", elf.display()))?;
    let probe = CrashProbe::new(&crash, Some(code))?;
    let opts = crate::debug::Options { port: a.port, elf: a.elf, stats: None, json };
    crate::debug::run(&opts, move || Ok(Box::new(probe)))
}

fn print_crash(c: &CrashJson) {
    println!(
        "{} on {} {}: {} at pc={:#010x}",
        c.id,
        c.app_name.as_deref().unwrap_or("?"),
        c.app_version.as_deref().unwrap_or("?"),
        c.kind,
        c.pc
    );
    println!("  lr={:#010x} sp={:#010x} xpsr={:#010x} exc_return={:#010x}", c.lr, c.sp, c.xpsr, c.exc_return);
    println!("  cfsr={:#010x} hfsr={:#010x} sfsr={:#010x} bfar={:#010x}", c.cfsr, c.hfsr, c.sfsr, c.bfar);
    if let Some(r) = &c.regs {
        let regs: Vec<String> = r.iter().enumerate().map(|(i, v)| format!("r{i}={v:#010x}")).collect();
        println!("  {}", regs.join(" "));
    }
    println!("  {} bytes of stack from {:#010x}", c.stack_bytes, c.stack_base);
    println!("next: keel crash show DEVICE {} --gdb --elf APP.elf, then gdb-multiarch APP.elf -ex 'target remote :8001' -ex bt", c.id);
}

/// A stored crash as a [`Probe`]: halted where it faulted, its registers, its stack and (through
/// the RSP server's ELF cache) its code; nothing can run or be written.
pub struct CrashProbe {
    regs: Regs,
    kind: u32,
    stack_base: u32,
    stack: Vec<u8>,
    /// The app's code, from its ELF file (a crash dump holds no code).
    code: Option<CodeImage>,
    events: VecDeque<DeviceEvent>,
}

impl CrashProbe {
    /// The probe for `c`.
    pub fn new(c: &CrashJson, code: Option<CodeImage>) -> Result<CrashProbe, String> {
        let stack = keel_server::unhex(&c.stack_hex).ok_or("the server sent a malformed stack dump")?;
        let mut regs = [0u32; NREGS];
        if let Some(r) = &c.regs {
            for (d, s) in regs.iter_mut().zip(r.iter().take(13)) {
                *d = *s;
            }
        }
        regs[13] = c.sp;
        regs[14] = c.lr;
        regs[15] = c.pc;
        regs[16] = c.xpsr;
        // EXC_RETURN bit 2: the app ran on its process stack.
        if c.exc_return & (1 << 2) != 0 {
            regs[18] = c.sp;
        } else {
            regs[17] = c.sp;
        }
        Ok(CrashProbe { regs, kind: c.kind_code, stack_base: c.stack_base, stack, code, events: VecDeque::new() })
    }

    fn read(&self, addr: u32, len: u16) -> OpOutcome {
        let off = addr.wrapping_sub(self.stack_base) as usize;
        if let Some(b) = self.stack.get(off..off + len as usize).filter(|_| addr >= self.stack_base) {
            return OpOutcome::Ok(b.to_vec());
        }
        match self.code.as_ref().and_then(|c| c.get(addr, len as usize)) {
            Some(b) => OpOutcome::Ok(b.to_vec()),
            // Not in the dump: only the stack's top and the code are known.
            None => OpOutcome::Err(Status::Denied),
        }
    }
}

impl Probe for CrashProbe {
    fn batch(&mut self, ops: &[Op<'_>]) -> Result<Vec<OpOutcome>, ProbeError> {
        Ok(ops
            .iter()
            .map(|op| match *op {
                Op::Hello => OpOutcome::Ok(vec![1]),
                Op::Halt => {
                    let stop = Stop { reason: StopReason::Fault, detail: self.kind, regs: self.regs };
                    self.events.push_back(DeviceEvent::Stop(stop));
                    OpOutcome::Ok(vec![])
                }
                Op::ReadRegs => OpOutcome::Ok(self.regs.iter().flat_map(|r| r.to_le_bytes()).collect()),
                Op::ReadMem { addr, len } => self.read(addr, len),
                Op::Detach | Op::Ping | Op::ClearBreak { .. } => OpOutcome::Ok(vec![]),
                // A crash does not run: no resume, no breakpoints, no writes.
                _ => OpOutcome::Err(Status::Unsupported),
            })
            .collect())
    }

    fn wait_event(&mut self, _timeout: std::time::Duration) -> Result<Option<DeviceEvent>, ProbeError> {
        Ok(self.events.pop_front())
    }

    fn round_trips(&self) -> u64 {
        0
    }
}
