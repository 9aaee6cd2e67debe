//! # Keel system-call ABI
//!
//! The contract between the Keel visor (secure world) and an application (non-secure world).
//! Everything here is plain data: call slot numbers, status codes and `#[repr(C)]` structs whose
//! layout is frozen per version. The same definitions are used by the visor (which implements the
//! calls), by the Rust SDK `keel-app` (which wraps them) and are mirrored in the C header
//! `sdk/c/include/keel.h` (a test checks the two agree).
//!
//! ## Calling convention
//!
//! * Every call is a branch to a **fixed slot** in the visor's non-secure-callable (NSC) region:
//!   `address = nsc_base + 16 * slot`, Thumb bit set. Slots never move between visor versions;
//!   unused slots are reserved and answer [`Status::NotImplemented`].
//! * Up to four 32-bit arguments in `r0..r3`; the result is a [`Status`] in `r0`, except
//!   [`Call::MonotonicUs`], which cannot fail and returns its `u64` in `r0:r1`. Other calls that
//!   produce data write it through a pointer argument.
//! * Every pointer is checked by the visor for non-secure access over its whole length before it
//!   is used. A pointer the app may not use yields [`Status::ParameterFault`] — never a fault.
//! * Structs that may grow carry a `version` field the caller sets (see [`AbiInfo`]); an unknown
//!   version yields [`Status::UnsupportedStructVersion`].
//! * Calls may be made from thread mode or from the app's interrupt handlers, except
//!   [`Call::Restart`] and [`Call::UpdateApply`], which answer [`Status::Unavailable`] from a
//!   handler.
//! * **No call blocks, and no non-secure exception preempts a call**: every call runs with all
//!   non-secure exceptions masked, so a call is atomic to the app — to its interrupt handlers,
//!   and to the tasks of any RTOS, whose task switches cannot land inside one. Waiting happens in
//!   the app: the visor reports asynchronous events as records in a [`notify`] ring in app memory
//!   and pends an interrupt the app chose ([`Call::NotifySetup`]), and the app sleeps with `wfi`.
#![no_std]

pub mod chan;
pub mod notify;

/// ABI major version: bumped only for incompatible changes (2: `wait` replaced by notification
/// rings, `monotonic_us` returns its value in registers, calls mask non-secure exceptions).
pub const ABI_MAJOR: u16 = 2;
/// ABI minor version: bumped when calls or struct versions are added.
pub const ABI_MINOR: u16 = 1;

/// Size in bytes of one NSC veneer slot.
pub const SLOT_SIZE: u32 = 16;
/// Number of slots in the NSC table (used + reserved).
pub const SLOT_COUNT: u32 = 64;

/// Maximum length of one log message in bytes.
pub const LOG_MAX_LEN: u32 = 512;
/// Length of the ASCII device id written by [`Call::DeviceId`] (`"kd"` + 32 lowercase hex digits).
pub const DEVICE_ID_LEN: u32 = 34;
/// Shortest watchdog timeout an app may ask for, in milliseconds.
pub const WATCHDOG_MIN_MS: u32 = 10;
/// Longest watchdog timeout an app may ask for, in milliseconds (one hour).
pub const WATCHDOG_MAX_MS: u32 = 3_600_000;

/// Result of every system call (`r0`). Values are stable; new ones are only ever appended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The wall clock has not been set yet (it is set by the server once the device is online).
    TimeNotSet = 1,
    /// A pointer argument is not entirely inside memory the app may access.
    ParameterFault = 2,
    /// A buffer is too small (or too large) for the call.
    InvalidBufferSize = 3,
    /// A non-pointer argument is out of range.
    InvalidArgument = 4,
    /// The `version` field of a struct is not supported by this visor.
    UnsupportedStructVersion = 5,
    /// The slot is reserved for a future call.
    NotImplemented = 6,
    /// The call cannot be made in the current state (e.g. from an interrupt handler).
    Unavailable = 7,
    /// A log message exceeds [`LOG_MAX_LEN`].
    LogMessageTooLong = 8,
    /// The visor hit an unexpected internal error; the call had no effect.
    InternalError = 9,
    /// The handle names no open channel (never opened, closed, or from an earlier app start).
    /// Since ABI 2.1.
    InvalidHandle = 10,
    /// Every channel slot is in use ([`chan::MAX_CHANNELS`]). Since ABI 2.1.
    TooManyChannels = 11,
    /// The channel was closed by the server or the link (see [`chan::Reason`]); close it.
    /// Since ABI 2.1.
    ChannelClosed = 12,
    /// Not now: the transmit buffer has no room for the message yet. Retry after a
    /// [`notify::Kind::ChannelWritable`] record (or later). Since ABI 2.1.
    WouldBlock = 13,
    /// The device is not connected to the server. Since ABI 2.1.
    NetworkNotConnected = 14,
    /// Too many requests in a short time; retry later. Since ABI 2.1.
    RateLimited = 15,
    /// A buffer is not aligned as the call requires ([`chan::BUFFER_ALIGN`]). Since ABI 2.1.
    InvalidBufferAlignment = 16,
    /// The channel kind is not one of [`chan::Kind`]. Since ABI 2.1.
    UnknownChannelKind = 17,
    /// A buffer overlaps another channel's buffer or the notification ring. Since ABI 2.1.
    BufferInUse = 18,
    /// Nothing to read: no complete message waits on the channel. Since ABI 2.1.
    NoData = 19,
}

impl Status {
    /// All statuses, in numeric order.
    pub const ALL: [Status; 20] = [
        Status::Ok,
        Status::TimeNotSet,
        Status::ParameterFault,
        Status::InvalidBufferSize,
        Status::InvalidArgument,
        Status::UnsupportedStructVersion,
        Status::NotImplemented,
        Status::Unavailable,
        Status::LogMessageTooLong,
        Status::InternalError,
        Status::InvalidHandle,
        Status::TooManyChannels,
        Status::ChannelClosed,
        Status::WouldBlock,
        Status::NetworkNotConnected,
        Status::RateLimited,
        Status::InvalidBufferAlignment,
        Status::UnknownChannelKind,
        Status::BufferInUse,
        Status::NoData,
    ];

    /// Decodes a raw `r0` value.
    pub fn from_u32(v: u32) -> Option<Status> {
        Status::ALL.get(v as usize).copied()
    }

    /// The C name of this status (`KEEL_STATUS_...`), also used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::TimeNotSet => "TIME_NOT_SET",
            Status::ParameterFault => "PARAMETER_FAULT",
            Status::InvalidBufferSize => "INVALID_BUFFER_SIZE",
            Status::InvalidArgument => "INVALID_ARGUMENT",
            Status::UnsupportedStructVersion => "UNSUPPORTED_STRUCT_VERSION",
            Status::NotImplemented => "NOT_IMPLEMENTED",
            Status::Unavailable => "UNAVAILABLE",
            Status::LogMessageTooLong => "LOG_MESSAGE_TOO_LONG",
            Status::InternalError => "INTERNAL_ERROR",
            Status::InvalidHandle => "INVALID_HANDLE",
            Status::TooManyChannels => "TOO_MANY_CHANNELS",
            Status::ChannelClosed => "CHANNEL_CLOSED",
            Status::WouldBlock => "WOULD_BLOCK",
            Status::NetworkNotConnected => "NETWORK_NOT_CONNECTED",
            Status::RateLimited => "RATE_LIMITED",
            Status::InvalidBufferAlignment => "INVALID_BUFFER_ALIGNMENT",
            Status::UnknownChannelKind => "UNKNOWN_CHANNEL_KIND",
            Status::BufferInUse => "BUFFER_IN_USE",
            Status::NoData => "NO_DATA",
        }
    }
}

/// The system calls and their fixed slots.
///
/// Slots 0..=10 are the base calls (slot 6, `wait` in ABI 1, is retired). Ranges are reserved by
/// purpose: 16..=31 for notifications, networking and channels (16, 17 used), 32..=39 for update
/// control (32..=34 used), 40..=47 for configuration and secrets, 48..=55 for debugging, the rest
/// for later use. Unused slots answer [`Status::NotImplemented`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `abi_info(AbiInfo *out)`: ABI and visor versions.
    AbiInfo = 0,
    /// `device_id(uint8_t *buf, uint32_t len)`: writes the [`DEVICE_ID_LEN`]-byte ASCII id (not NUL
    /// terminated). `len` must be at least [`DEVICE_ID_LEN`]. [`Status::Unavailable`] if the
    /// device has no factory data (not provisioned).
    DeviceId = 1,
    /// `uint64_t monotonic_us(void)`: microseconds since the visor started, returned in `r0`
    /// (low word) and `r1` (high word); never jumps and never fails.
    MonotonicUs = 2,
    /// `wall_time_us(uint64_t *out)`: microseconds since the Unix epoch, or
    /// [`Status::TimeNotSet`] until the clock has been synchronised.
    WallTimeUs = 3,
    /// `log(uint32_t level, const uint8_t *msg, uint32_t len)`: one log line (see [`LogLevel`]).
    Log = 4,
    /// `restart(uint32_t reason)`: restarts the app now. Does not return on success.
    /// `reason` is an app-defined code reported as [`BootInfo::restart_code`] after the restart.
    Restart = 5,
    /// `watchdog_start(uint32_t timeout_ms)`: arms the app watchdog; an app that does not call
    /// [`Call::WatchdogKick`] within `timeout_ms` is restarted. Calling it again changes the
    /// timeout. Cannot be disarmed until the next restart.
    WatchdogStart = 7,
    /// `watchdog_kick(void)`: feeds the watchdog; [`Status::Unavailable`] if it was not started.
    WatchdogKick = 8,
    /// `boot_info(BootInfo *out)`: why and how often the app was (re)started.
    BootInfo = 9,
    /// `last_crash(CrashReport *out)`: the last crash report, [`Status::Unavailable`] if none.
    LastCrash = 10,
    /// `notify_setup(keel_notify_ring *ring, uint32_t bytes, uint32_t irq)`: the visor reports
    /// asynchronous events as records in `ring` (see [`notify`]; `bytes` =
    /// [`notify::ring_bytes`] of a power-of-two record count in
    /// [`notify::MIN_RECORDS`]..=[`notify::MAX_RECORDS`], 4-aligned, in app RAM) and pends the
    /// app's interrupt `irq` (one of [`notify::APP_IRQS`] on the reference board, which the visor
    /// then routes to the non-secure world; the app enables it in its NVIC) after every record.
    /// `ring = NULL` turns notifications off. Setting up a new ring starts it empty; events that
    /// happened while none was set up (an update ready) are reported in the new one. Every app
    /// start begins with notifications off.
    NotifySetup = 16,
    /// `timer_set(uint32_t deadline_lo, uint32_t deadline_hi, uint32_t tag)`: a one-shot timer on
    /// the monotonic clock: at the deadline (µs, as [`Call::MonotonicUs`]) the visor posts a
    /// [`notify::Kind::Timer`] record carrying `tag`. A deadline already past fires at once;
    /// deadline 0 cancels; a new call replaces the pending timer. [`Status::Unavailable`] without
    /// a notification ring.
    TimerSet = 17,
    /// `net_request(uint32_t tag)`: the app wants the network. Requests are counted (at most
    /// [`chan::MAX_NET_REQUESTS`]); while the app holds one, every change of the link's state is
    /// reported as a [`notify::Kind::NetStatus`] record with `tag`, starting with the current
    /// state at once. The visor stays in charge of the link: it keeps it up for its own needs
    /// (updates, logs) whatever the app does. Since ABI 2.1.
    NetRequest = 18,
    /// `net_release(void)`: drops one request; [`Status::Unavailable`] if the app holds none.
    /// Since ABI 2.1.
    NetRelease = 19,
    /// `net_status(keel_net_status_t *out)`: the link's state, why it is wanted and why it is
    /// down ([`chan::NetStatus`]). Since ABI 2.1.
    NetStatus = 20,
    /// `chan_open(const keel_chan_open_t *params, uint32_t *handle_out)`: opens a channel to a
    /// service of the server with the app's own receive and transmit buffers
    /// ([`chan::OpenParams`]). Since ABI 2.1.
    ChanOpen = 21,
    /// `chan_send(uint32_t handle, const uint8_t *msg, uint32_t len)`: queues one whole message
    /// in the channel's transmit buffer; the visor sends it as the server's credit allows.
    /// Since ABI 2.1.
    ChanSend = 22,
    /// `chan_recv(uint32_t handle, keel_chan_msg_t *out)`: where the oldest complete message
    /// lies in the receive buffer ([`chan::MsgInfo`]); [`Status::NoData`] if none. The app reads
    /// it in place, then calls [`Call::ChanConsume`]. Since ABI 2.1.
    ChanRecv = 23,
    /// `chan_consume(uint32_t handle)`: frees the oldest message (the one [`Call::ChanRecv`]
    /// reported); the visor gives its room back to the server as credit. Since ABI 2.1.
    ChanConsume = 24,
    /// `chan_close(uint32_t *handle)`: closes the channel and writes 0 to `*handle` — also when
    /// the handle was already closed or invalid (then [`Status::InvalidHandle`]). Since ABI 2.1.
    ChanClose = 25,
    /// `chan_info(uint32_t handle, keel_chan_info_t *out)`: the channel's kind, state, closure
    /// reason and buffer levels ([`chan::ChanInfo`]). Since ABI 2.1.
    ChanInfo = 26,
    /// `update_confirm(void)`: the app running as an update on trial confirms that it works;
    /// the update becomes permanent (no rollback any more). [`Status::Unavailable`] if the app
    /// is not on trial (already confirmed, or no update). Since ABI 1.1.
    UpdateConfirm = 32,
    /// `update_info(UpdateInfo *out)`: whether the app runs on trial, the installed update's
    /// sequence number, and how the last update ended (confirmed, rolled back and why, ...).
    /// Since ABI 1.1.
    UpdateInfo = 33,
    /// `update_apply(void)`: applies an update that is ready ([`notify::Kind::UpdateReady`]): the
    /// app is stopped and the new version starts on trial. Does not return on success;
    /// [`Status::Unavailable`] if no update is ready (or from an exception handler). Since ABI 1.1.
    UpdateApply = 34,
}

impl Call {
    /// Every implemented call, in slot order.
    pub const ALL: [Call; 24] = [
        Call::AbiInfo,
        Call::DeviceId,
        Call::MonotonicUs,
        Call::WallTimeUs,
        Call::Log,
        Call::Restart,
        Call::WatchdogStart,
        Call::WatchdogKick,
        Call::BootInfo,
        Call::LastCrash,
        Call::NotifySetup,
        Call::TimerSet,
        Call::NetRequest,
        Call::NetRelease,
        Call::NetStatus,
        Call::ChanOpen,
        Call::ChanSend,
        Call::ChanRecv,
        Call::ChanConsume,
        Call::ChanClose,
        Call::ChanInfo,
        Call::UpdateConfirm,
        Call::UpdateInfo,
        Call::UpdateApply,
    ];

    /// Decodes a slot number.
    pub fn from_slot(slot: u32) -> Option<Call> {
        match slot {
            0..=5 => Call::ALL.get(slot as usize).copied(),
            7..=10 => Call::ALL.get(slot as usize - 1).copied(),
            16 => Some(Call::NotifySetup),
            17 => Some(Call::TimerSet),
            18..=26 => Call::ALL.get(slot as usize - 6).copied(),
            32 => Some(Call::UpdateConfirm),
            33 => Some(Call::UpdateInfo),
            34 => Some(Call::UpdateApply),
            _ => None,
        }
    }

    /// The C function name for this call.
    pub fn c_name(self) -> &'static str {
        match self {
            Call::AbiInfo => "keel_abi_info",
            Call::DeviceId => "keel_device_id",
            Call::MonotonicUs => "keel_monotonic_us",
            Call::WallTimeUs => "keel_wall_time_us",
            Call::Log => "keel_log",
            Call::Restart => "keel_restart",
            Call::NotifySetup => "keel_notify_setup",
            Call::TimerSet => "keel_timer_set",
            Call::NetRequest => "keel_net_request",
            Call::NetRelease => "keel_net_release",
            Call::NetStatus => "keel_net_status",
            Call::ChanOpen => "keel_chan_open",
            Call::ChanSend => "keel_chan_send",
            Call::ChanRecv => "keel_chan_recv",
            Call::ChanConsume => "keel_chan_consume",
            Call::ChanClose => "keel_chan_close",
            Call::ChanInfo => "keel_chan_info",
            Call::WatchdogStart => "keel_watchdog_start",
            Call::WatchdogKick => "keel_watchdog_kick",
            Call::BootInfo => "keel_boot_info",
            Call::LastCrash => "keel_last_crash",
            Call::UpdateConfirm => "keel_update_confirm",
            Call::UpdateInfo => "keel_update_info",
            Call::UpdateApply => "keel_update_apply",
        }
    }
}

/// Severity of a log message.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors.
    Error = 0,
    /// Warnings.
    Warn = 1,
    /// Normal information.
    Info = 2,
    /// Debug output.
    Debug = 3,
}

impl LogLevel {
    /// Decodes a raw level.
    pub fn from_u32(v: u32) -> Option<LogLevel> {
        match v {
            0 => Some(LogLevel::Error),
            1 => Some(LogLevel::Warn),
            2 => Some(LogLevel::Info),
            3 => Some(LogLevel::Debug),
            _ => None,
        }
    }
    /// Short tag used on the console.
    pub fn tag(self) -> &'static str {
        match self {
            LogLevel::Error => "E",
            LogLevel::Warn => "W",
            LogLevel::Info => "I",
            LogLevel::Debug => "D",
        }
    }
}

/// Event bits the device core keeps for the app until they are reported as [`notify`] records.
pub mod events {
    /// No event.
    pub const NONE: u32 = 0;
    /// An update is downloaded and verified, and its bundle lets the app choose when it is
    /// applied: call [`super::Call::UpdateApply`] at a convenient moment. The visor applies it
    /// anyway when the bundle's politeness time is over. Reported once, as a
    /// [`super::notify::Kind::UpdateReady`] record.
    pub const UPDATE_READY: u32 = 1 << 0;
}

/// Why the app is running now ([`BootInfo::reason`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartReason {
    /// First start after the device powered on or reset.
    ColdBoot = 0,
    /// The app crashed (fault) and was restarted.
    Crash = 1,
    /// The app stopped kicking its watchdog and was restarted.
    Watchdog = 2,
    /// The app asked for a restart ([`Call::Restart`]).
    Requested = 3,
}

impl StartReason {
    /// Decodes a raw reason.
    pub fn from_u32(v: u32) -> Option<StartReason> {
        match v {
            0 => Some(StartReason::ColdBoot),
            1 => Some(StartReason::Crash),
            2 => Some(StartReason::Watchdog),
            3 => Some(StartReason::Requested),
            _ => None,
        }
    }
    /// Lowercase name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            StartReason::ColdBoot => "cold-boot",
            StartReason::Crash => "crash",
            StartReason::Watchdog => "watchdog",
            StartReason::Requested => "requested",
        }
    }
}

/// What kind of fault (or policy event) ended the app ([`CrashReport::kind`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// HardFault: every app fault the app does not handle itself ends here (undefined
    /// instruction, stack overflow, division by zero, `bkpt` without a debugger...); the cause is
    /// in [`CrashReport::cfsr`].
    HardFault = 3,
    /// MemManage fault (of the visor's own MPU checks; not produced for app faults today).
    MemManage = 4,
    /// BusFault (e.g. an access blocked by a peripheral or memory protection controller).
    BusFault = 5,
    /// UsageFault taken by the visor directly (app usage faults escalate to [`FaultKind::HardFault`]
    /// because the visor starts the app with its fault handlers disabled).
    UsageFault = 6,
    /// SecureFault: the app touched secure memory or entered secure code other than via a slot.
    SecureFault = 7,
    /// The watchdog expired.
    Watchdog = 0x100,
    /// The system reset while the app ran, and nothing explains it (no app fault, hang or visor
    /// reason was recorded before): counted as a crash of the app.
    Reset = 0x101,
}

impl FaultKind {
    /// Decodes a raw kind.
    pub fn from_u32(v: u32) -> Option<FaultKind> {
        match v {
            3 => Some(FaultKind::HardFault),
            4 => Some(FaultKind::MemManage),
            5 => Some(FaultKind::BusFault),
            6 => Some(FaultKind::UsageFault),
            7 => Some(FaultKind::SecureFault),
            0x100 => Some(FaultKind::Watchdog),
            0x101 => Some(FaultKind::Reset),
            _ => None,
        }
    }
    /// Name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::HardFault => "HardFault",
            FaultKind::MemManage => "MemManage",
            FaultKind::BusFault => "BusFault",
            FaultKind::UsageFault => "UsageFault",
            FaultKind::SecureFault => "SecureFault",
            FaultKind::Watchdog => "Watchdog",
            FaultKind::Reset => "Reset",
        }
    }
}

/// Output of [`Call::AbiInfo`]. Set `version` to 1 before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbiInfo {
    /// Struct version, set by the caller (1).
    pub version: u32,
    /// [`ABI_MAJOR`] of the running visor.
    pub abi_major: u16,
    /// [`ABI_MINOR`] of the running visor.
    pub abi_minor: u16,
    /// Visor version: major.
    pub visor_major: u16,
    /// Visor version: minor.
    pub visor_minor: u16,
    /// Visor version: patch.
    pub visor_patch: u16,
    /// Reserved, 0.
    pub reserved: u16,
}

/// Output of [`Call::BootInfo`]. Set `version` to 1 before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// Struct version, set by the caller (1).
    pub version: u32,
    /// Why the app is running now ([`StartReason`] as `u32`).
    pub reason: u32,
    /// How many times the app has been (re)started since the visor booted (0 for the first start).
    pub restart_count: u32,
    /// How many of those restarts were caused by crashes or the watchdog.
    pub crash_count: u32,
    /// The `reason` passed to [`Call::Restart`] when [`BootInfo::reason`] is `Requested`, else 0.
    pub restart_code: u32,
    /// How many times the visor itself has booted on this device (persistent).
    pub visor_boot_count: u32,
}

/// How the last update ended ([`UpdateInfo::last_outcome`]).
pub mod update_outcome {
    /// No update ended since the factory image.
    pub const NONE: u32 = 0;
    /// Installed and confirmed.
    pub const CONFIRMED: u32 = 1;
    /// Installed, then rolled back to the previous app (see [`super::UpdateInfo::last_reason`]).
    pub const ROLLED_BACK: u32 = 2;
    /// Refused before anything was written (e.g. a sequence number not above the installed one).
    pub const REFUSED: u32 = 3;
    /// Failed while downloading or installing; the running app was not changed.
    pub const FAILED: u32 = 4;
}

/// Why an update did not complete: the one list of update reason codes, shared by the update
/// journal (stored as one byte), [`UpdateInfo::last_reason`], the C header
/// (`KEEL_UPDATE_REASON_*`, checked against [`UpdateReason::ALL`] by a test) and the wire
/// (`UpdateStatus.reason`, `VisorEvent::Update.reason`); the server renders [`UpdateReason::as_str`].
/// Codes never change meaning; new ones are added at the end. 0 means "no reason".
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateReason {
    /// The trial app crashed `max_crashes` times.
    CrashLoop = 1,
    /// The trial app hung (watchdog) until `max_crashes` was reached.
    Watchdog = 2,
    /// The grace time passed without the app confirming.
    NotConfirmed = 3,
    /// The grace time passed without the cloud link (policy `ByLink`).
    NoLink = 4,
    /// The device reset too often while the trial ran.
    TrialResets = 5,
    /// The trial slot did not hold a valid image at boot.
    TrialImageInvalid = 6,
    /// The offered sequence number is not above the installed one (anti-rollback).
    SequenceNotNewer = 7,
    /// The layer does not fit the slot.
    TooLarge = 8,
    /// The downloaded layer does not match the manifest's digest.
    DigestMismatch = 9,
    /// The layer is not a valid app image for this device.
    BadImage = 10,
    /// The download was abandoned (deployment withdrawn or replaced).
    Cancelled = 11,
    /// A trial is running; finish it before the next update.
    Busy = 12,
    /// Flash error while installing.
    Flash = 13,
    /// The manifest is malformed, not signed by a trusted key, or has no app layer.
    BadManifest = 14,
    /// The bundle needs a newer visor.
    VisorTooOld = 15,
    /// The server could not serve the layer (`LayerError`).
    LayerUnavailable = 16,
    /// The grace time passed with the link up, but the trial app gave no sign of life (its
    /// running instance was too young or silent; policy `ByLink`).
    NoSignOfLife = 17,
}

impl UpdateReason {
    /// Every reason, in code order.
    pub const ALL: [UpdateReason; 17] = [
        UpdateReason::CrashLoop,
        UpdateReason::Watchdog,
        UpdateReason::NotConfirmed,
        UpdateReason::NoLink,
        UpdateReason::TrialResets,
        UpdateReason::TrialImageInvalid,
        UpdateReason::SequenceNotNewer,
        UpdateReason::TooLarge,
        UpdateReason::DigestMismatch,
        UpdateReason::BadImage,
        UpdateReason::Cancelled,
        UpdateReason::Busy,
        UpdateReason::Flash,
        UpdateReason::BadManifest,
        UpdateReason::VisorTooOld,
        UpdateReason::LayerUnavailable,
        UpdateReason::NoSignOfLife,
    ];

    /// The code (never 0).
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The reason with code `v`, if known.
    pub fn from_u16(v: u16) -> Option<UpdateReason> {
        UpdateReason::ALL.into_iter().find(|r| *r as u16 == v)
    }

    /// The reason with code `v`, if known (the journal stores codes as one byte).
    pub fn from_u8(v: u8) -> Option<UpdateReason> {
        Self::from_u16(v as u16)
    }

    /// Short description, as the server shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateReason::CrashLoop => "crash loop",
            UpdateReason::Watchdog => "watchdog",
            UpdateReason::NotConfirmed => "not confirmed in time",
            UpdateReason::NoLink => "no cloud link in the grace time",
            UpdateReason::TrialResets => "too many resets during the trial",
            UpdateReason::TrialImageInvalid => "trial image invalid",
            UpdateReason::SequenceNotNewer => "sequence not above the installed one",
            UpdateReason::TooLarge => "layer too large for the slot",
            UpdateReason::DigestMismatch => "layer digest mismatch",
            UpdateReason::BadImage => "not a valid app image",
            UpdateReason::Cancelled => "cancelled",
            UpdateReason::Busy => "a trial is running",
            UpdateReason::Flash => "flash error",
            UpdateReason::BadManifest => "manifest invalid or not signed by a trusted key",
            UpdateReason::VisorTooOld => "needs a newer visor",
            UpdateReason::LayerUnavailable => "the server could not serve the layer",
            UpdateReason::NoSignOfLife => "no sign of life from the trial app",
        }
    }

    /// The C name without its prefix: `KEEL_UPDATE_REASON_` + this (e.g. `CRASH_LOOP`).
    pub fn c_name(self) -> &'static str {
        match self {
            UpdateReason::CrashLoop => "CRASH_LOOP",
            UpdateReason::Watchdog => "WATCHDOG",
            UpdateReason::NotConfirmed => "NOT_CONFIRMED",
            UpdateReason::NoLink => "NO_LINK",
            UpdateReason::TrialResets => "TRIAL_RESETS",
            UpdateReason::TrialImageInvalid => "TRIAL_IMAGE_INVALID",
            UpdateReason::SequenceNotNewer => "SEQUENCE_NOT_NEWER",
            UpdateReason::TooLarge => "TOO_LARGE",
            UpdateReason::DigestMismatch => "DIGEST_MISMATCH",
            UpdateReason::BadImage => "BAD_IMAGE",
            UpdateReason::Cancelled => "CANCELLED",
            UpdateReason::Busy => "BUSY",
            UpdateReason::Flash => "FLASH",
            UpdateReason::BadManifest => "BAD_MANIFEST",
            UpdateReason::VisorTooOld => "VISOR_TOO_OLD",
            UpdateReason::LayerUnavailable => "LAYER_UNAVAILABLE",
            UpdateReason::NoSignOfLife => "NO_SIGN_OF_LIFE",
        }
    }
}

/// Output of [`Call::UpdateInfo`]. Set `version` to 1 before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateInfo {
    /// Struct version, set by the caller (1).
    pub version: u32,
    /// 1 if this app is an update on trial: it should call [`Call::UpdateConfirm`] once it
    /// works (or it is rolled back, by policy).
    pub on_trial: u32,
    /// Manifest sequence number of the installed (confirmed) app; 0 for the factory image.
    pub installed_sequence: u64,
    /// Sequence number of the last update that ended (0 if none).
    pub last_sequence: u64,
    /// How it ended ([`update_outcome`]).
    pub last_outcome: u32,
    /// Why, for rolled back, refused and failed: an [`UpdateReason`] code; 0 otherwise.
    pub last_reason: u32,
}

impl UpdateInfo {
    /// The struct as the app sees it in memory (little endian, `repr(C)` layout).
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        put_u32(&mut b, 0, self.version);
        put_u32(&mut b, 4, self.on_trial);
        b[8..16].copy_from_slice(&self.installed_sequence.to_le_bytes());
        b[16..24].copy_from_slice(&self.last_sequence.to_le_bytes());
        put_u32(&mut b, 24, self.last_outcome);
        put_u32(&mut b, 28, self.last_reason);
        b
    }
}

/// Number of stack words copied into a [`CrashReport`].
pub const CRASH_STACK_WORDS: usize = 8;

/// Output of [`Call::LastCrash`] and the body of the visor's crash log line. Set `version` to 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Struct version, set by the caller (1).
    pub version: u32,
    /// [`FaultKind`] as `u32`.
    pub kind: u32,
    /// Monotonic time of the crash in microseconds.
    pub time_us: u64,
    /// r0..r3, r12, lr, pc, xpsr as stacked by the exception (pc is the faulting instruction
    /// for precise faults).
    pub frame: [u32; 8],
    /// The app's stack pointer at the fault (after the exception frame was removed).
    pub sp: u32,
    /// EXC_RETURN of the exception that caught the fault.
    pub exc_return: u32,
    /// Configurable Fault Status Register: the secure and non-secure banks OR-ed together (the
    /// cause of an app fault that escalated to HardFault is in the non-secure bank).
    pub cfsr: u32,
    /// HardFault Status Register.
    pub hfsr: u32,
    /// SecureFault Status Register.
    pub sfsr: u32,
    /// SecureFault Address Register (valid if `sfsr` bit 6 SFARVALID is set).
    pub sfar: u32,
    /// BusFault Address Register (valid if `cfsr` bit 15 BFARVALID is set).
    pub bfar: u32,
    /// MemManage Fault Address Register (valid if `cfsr` bit 7 MMARVALID is set).
    pub mmfar: u32,
    /// Top of the app's stack at the fault, starting at `sp` (0 where unreadable).
    pub stack: [u32; CRASH_STACK_WORDS],
}

impl CrashReport {
    /// Stacked program counter: the faulting instruction.
    pub fn pc(&self) -> u32 {
        self.frame[6]
    }
    /// Stacked link register.
    pub fn lr(&self) -> u32 {
        self.frame[5]
    }
}

fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

impl AbiInfo {
    /// The struct as the app sees it in memory (little endian, `repr(C)` layout).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        put_u32(&mut b, 0, self.version);
        b[4..6].copy_from_slice(&self.abi_major.to_le_bytes());
        b[6..8].copy_from_slice(&self.abi_minor.to_le_bytes());
        b[8..10].copy_from_slice(&self.visor_major.to_le_bytes());
        b[10..12].copy_from_slice(&self.visor_minor.to_le_bytes());
        b[12..14].copy_from_slice(&self.visor_patch.to_le_bytes());
        b[14..16].copy_from_slice(&self.reserved.to_le_bytes());
        b
    }
}

impl BootInfo {
    /// The struct as the app sees it in memory (little endian, `repr(C)` layout).
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        for (i, v) in
            [self.version, self.reason, self.restart_count, self.crash_count, self.restart_code, self.visor_boot_count]
                .iter()
                .enumerate()
        {
            put_u32(&mut b, 4 * i, *v);
        }
        b
    }
}

impl CrashReport {
    /// The struct as the app sees it in memory (little endian, `repr(C)` layout).
    pub fn to_bytes(&self) -> [u8; 112] {
        let mut b = [0u8; 112];
        put_u32(&mut b, 0, self.version);
        put_u32(&mut b, 4, self.kind);
        b[8..16].copy_from_slice(&self.time_us.to_le_bytes());
        for (i, v) in self.frame.iter().enumerate() {
            put_u32(&mut b, 16 + 4 * i, *v);
        }
        for (i, v) in [self.sp, self.exc_return, self.cfsr, self.hfsr, self.sfsr, self.sfar, self.bfar, self.mmfar]
            .iter()
            .enumerate()
        {
            put_u32(&mut b, 48 + 4 * i, *v);
        }
        for (i, v) in self.stack.iter().enumerate() {
            put_u32(&mut b, 80 + 4 * i, *v);
        }
        b
    }

    /// The inverse of [`CrashReport::to_bytes`].
    pub fn from_bytes(b: &[u8; 112]) -> CrashReport {
        let w = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut r = CrashReport {
            version: w(0),
            kind: w(4),
            time_us: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
            sp: w(48),
            exc_return: w(52),
            cfsr: w(56),
            hfsr: w(60),
            sfsr: w(64),
            sfar: w(68),
            bfar: w(72),
            mmfar: w(76),
            ..Default::default()
        };
        for i in 0..8 {
            r.frame[i] = w(16 + 4 * i);
            r.stack[i] = w(80 + 4 * i);
        }
        r
    }
}

#[cfg(test)]
mod reason_tests {
    use super::UpdateReason;

    #[test]
    fn update_reason_codes_are_dense_unique_and_named() {
        for (i, r) in UpdateReason::ALL.into_iter().enumerate() {
            assert_eq!(r.code() as usize, i + 1, "{r:?}: codes start at 1, in order");
            assert_eq!(UpdateReason::from_u16(r.code()), Some(r));
            assert_eq!(UpdateReason::from_u8(r.code() as u8), Some(r));
            assert!(!r.as_str().is_empty() && !r.c_name().is_empty());
        }
        assert_eq!(UpdateReason::from_u16(0), None);
        assert_eq!(UpdateReason::from_u16(UpdateReason::ALL.len() as u16 + 1), None);
        // The journal's codes are frozen (the on-flash format stores them).
        assert_eq!(UpdateReason::CrashLoop as u8, 1);
        assert_eq!(UpdateReason::Flash as u8, 13);
        assert_eq!(UpdateReason::LayerUnavailable as u8, 16);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn struct_layouts_are_frozen() {
        // These sizes are part of the ABI: the C header declares the same structs.
        assert_eq!(size_of::<AbiInfo>(), 16);
        assert_eq!(size_of::<BootInfo>(), 24);
        assert_eq!(size_of::<CrashReport>(), 112);
        assert_eq!(core::mem::offset_of!(CrashReport, time_us), 8);
        assert_eq!(core::mem::offset_of!(CrashReport, stack), 80);
    }

    #[test]
    fn to_bytes_puts_fields_at_their_repr_c_offsets() {
        use core::mem::offset_of;
        let w = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let a = AbiInfo {
            version: 1,
            abi_major: 2,
            abi_minor: 3,
            visor_major: 4,
            visor_minor: 5,
            visor_patch: 6,
            reserved: 0,
        };
        let ab = a.to_bytes();
        assert_eq!(ab[offset_of!(AbiInfo, abi_minor)], 3);
        assert_eq!(ab[offset_of!(AbiInfo, visor_patch)], 6);
        let b =
            BootInfo { version: 1, reason: 2, restart_count: 3, crash_count: 4, restart_code: 5, visor_boot_count: 6 };
        let bb = b.to_bytes();
        assert_eq!(w(&bb, offset_of!(BootInfo, restart_code)), 5);
        assert_eq!(w(&bb, offset_of!(BootInfo, visor_boot_count)), 6);
        let mut c = CrashReport { version: 1, kind: 7, time_us: 0x1122_3344_5566_7788, ..Default::default() };
        c.frame = [10, 11, 12, 13, 14, 15, 16, 17];
        c.sp = 20;
        c.mmfar = 27;
        c.stack = [30, 31, 32, 33, 34, 35, 36, 37];
        let cb = c.to_bytes();
        assert_eq!(w(&cb, offset_of!(CrashReport, time_us)), 0x5566_7788);
        assert_eq!(w(&cb, offset_of!(CrashReport, frame) + 24), 16);
        assert_eq!(w(&cb, offset_of!(CrashReport, sp)), 20);
        assert_eq!(w(&cb, offset_of!(CrashReport, mmfar)), 27);
        assert_eq!(w(&cb, offset_of!(CrashReport, stack) + 28), 37);
    }

    #[test]
    fn crash_report_bytes_roundtrip() {
        let mut c =
            CrashReport { version: 1, kind: 5, time_us: u64::MAX - 3, sp: 9, bfar: 0xDEAD, ..Default::default() };
        c.frame[6] = 0x0020_0101;
        c.stack[7] = 77;
        assert_eq!(CrashReport::from_bytes(&c.to_bytes()), c);
    }

    #[test]
    fn status_roundtrip() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32);
            assert_eq!(Status::from_u32(i as u32), Some(*s));
        }
        assert_eq!(Status::from_u32(Status::ALL.len() as u32), None);
    }

    #[test]
    fn call_slots_decode_and_fit_the_table() {
        for c in Call::ALL {
            assert!((c as u32) < SLOT_COUNT);
            assert_eq!(Call::from_slot(c as u32), Some(c));
        }
        let used: std::vec::Vec<u32> = (0..SLOT_COUNT + 2).filter(|s| Call::from_slot(*s).is_some()).collect();
        assert_eq!(used, [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 32, 33, 34]);
    }

    #[test]
    fn update_info_layout_matches_repr_c() {
        assert_eq!(core::mem::size_of::<UpdateInfo>(), 32);
        let u = UpdateInfo {
            version: 1,
            on_trial: 1,
            installed_sequence: 0x0102_0304_0506_0708,
            last_sequence: 9,
            last_outcome: update_outcome::ROLLED_BACK,
            last_reason: 1,
        };
        let b = u.to_bytes();
        assert_eq!(b[8], 0x08);
        assert_eq!((b[16], b[24], b[28]), (9, 2, 1));
    }
}
