//! Crash dumps: what the visor reported about each app crash (registers, fault status, the top
//! of the app's stack), for post-mortem debugging (`keel crash show DEVICE --gdb`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A crash dump as listed (`GET /v1/devices/{id}/crashes`).
#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq, Eq, Clone)]
pub struct CrashSummaryJson {
    /// Crash id (`cr-` + 12 hex digits).
    pub id: String,
    /// When the server received the crash report, µs since the epoch.
    pub received_at_us: i64,
    /// Device time of the crash report, µs since the device's boot.
    pub device_time_us: u64,
    /// Log sequence number of the crash report (its record in the device's logs).
    pub seq: u64,
    /// Fault kind: `HardFault`, `MemManage`, `BusFault`, `UsageFault`, `SecureFault`, `Watchdog`,
    /// `Reset`, or `kind 0x...` for a code this server does not know.
    pub kind: String,
    /// The fault kind's code (`keel_abi::FaultKind`).
    pub kind_code: u32,
    /// Stacked program counter.
    pub pc: u32,
    /// Stacked link register.
    pub lr: u32,
    /// The app's stack pointer at the fault.
    pub sp: u32,
    /// The app the device announced when the crash arrived.
    pub app_name: Option<String>,
    /// Its version.
    pub app_version: Option<String>,
    /// Bytes of the app's stack stored (from `sp`; at most 384).
    pub stack_bytes: u32,
}

/// A crash dump with everything stored (`GET /v1/devices/{id}/crashes/{crash_id}`).
#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq, Eq, Clone)]
pub struct CrashJson {
    /// Crash id (`cr-` + 12 hex digits).
    pub id: String,
    /// When the server received the crash report, µs since the epoch.
    pub received_at_us: i64,
    /// Device time of the crash report, µs since the device's boot.
    pub device_time_us: u64,
    /// Log sequence number of the crash report.
    pub seq: u64,
    /// Fault kind name (see [`CrashSummaryJson::kind`]).
    pub kind: String,
    /// The fault kind's code.
    pub kind_code: u32,
    /// Stacked program counter.
    pub pc: u32,
    /// Stacked link register.
    pub lr: u32,
    /// The app's stack pointer at the fault.
    pub sp: u32,
    /// The app the device announced when the crash arrived.
    pub app_name: Option<String>,
    /// Its version.
    pub app_version: Option<String>,
    /// Bytes of the app's stack stored (the length of `stack_hex` / 2).
    pub stack_bytes: u32,
    /// Stacked xPSR.
    pub xpsr: u32,
    /// Configurable Fault Status Register.
    pub cfsr: u32,
    /// HardFault Status Register.
    pub hfsr: u32,
    /// SecureFault Status Register.
    pub sfsr: u32,
    /// BusFault Address Register.
    pub bfar: u32,
    /// EXC_RETURN of the exception that caught the fault.
    pub exc_return: u32,
    /// r0..r12 (13 values), or `null` if the device's registers report has not arrived.
    pub regs: Option<Vec<u32>>,
    /// Address of the first stack byte: the crash's `sp`.
    pub stack_base: u32,
    /// The app's stack from `stack_base` upwards as it was in memory (32-bit words
    /// little-endian), lowercase hex.
    pub stack_hex: String,
}

impl CrashJson {
    /// Its summary (as the list shows it).
    pub fn summary(&self) -> CrashSummaryJson {
        CrashSummaryJson {
            id: self.id.clone(),
            received_at_us: self.received_at_us,
            device_time_us: self.device_time_us,
            seq: self.seq,
            kind: self.kind.clone(),
            kind_code: self.kind_code,
            pc: self.pc,
            lr: self.lr,
            sp: self.sp,
            app_name: self.app_name.clone(),
            app_version: self.app_version.clone(),
            stack_bytes: self.stack_bytes,
        }
    }
}
