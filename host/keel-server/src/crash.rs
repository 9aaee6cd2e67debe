//! Crash dumps for post-mortem debugging, assembled from the visor's crash events.
//!
//! After an app crash the visor reports, as visor events in its log sequence, first
//! `VisorEvent::Crash` (fault kind, pc, lr, sp, xPSR, fault status registers), then
//! `VisorEvent::CrashRegs` (r0..r12), then up to six `VisorEvent::CrashStack` chunks of the app's
//! stack from `sp` (16 words each at offsets 0, 64, 128, ...; a chunk of fewer words ends the
//! dump, at most [`CRASH_DUMP_BYTES`] in all). Other events may come in between (an update
//! rolled back, the app quarantined), and a dump may be split across connections.
//!
//! The gateway's connection turns each of these events into a [`CrashPart`]; the store applies
//! the parts whose log record it stored for the first time (a redelivered record changes
//! nothing) in the transaction that stores the records, so a dump is assembled in the database
//! whatever connection its pieces came on. The rules:
//!
//! * A crash event starts a new dump (a new row in `crashes`); a dump being assembled stays as
//!   it is. A device keeps its newest [`MAX_CRASHES_PER_DEVICE`] dumps.
//! * Registers and stack chunks belong to the device's crash with the highest sequence number
//!   below theirs **in the same boot** (`seq >> 32`); with none, they are ignored. Registers are
//!   taken once.
//! * A stack chunk is appended only if it continues the stored stack exactly, the stack did not
//!   end (a short chunk ends it) and stays within [`CRASH_DUMP_BYTES`] ([`continues`]); anything
//!   else (a gap, a duplicate, an overlap, too much) is ignored.
//!
//! Crash parts come from records the daily log quota admitted: what one device stores stays
//! bounded by that quota and by [`MAX_CRASHES_PER_DEVICE`] rows of at most
//! [`CRASH_DUMP_BYTES`] of stack each.
//!
//! The API reads them with [`Store::crashes`] and [`Store::crash`].

use sqlx::Row;

pub use keel_proto::event::{CrashInfo, CRASH_CHUNK_WORDS, CRASH_DUMP_BYTES};

use crate::store::{Error, Store};
use crate::{hex, unhex};

/// Crash dumps kept per device: storing a new one deletes the oldest beyond this.
pub const MAX_CRASHES_PER_DEVICE: u32 = 20;

/// One piece of a crash dump: what a crash visor event adds to the device's crashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrashPart {
    /// `VisorEvent::Crash`: a new dump.
    Crash {
        /// The event's log sequence number.
        seq: u64,
        /// Device time of the event (µs since its boot).
        device_time_us: u64,
        /// When the server received it (µs since the epoch).
        received_at: u64,
        /// What the visor reported.
        info: CrashInfo,
    },
    /// `VisorEvent::CrashRegs`: r0..r12 of the crash before it.
    Regs {
        /// The event's log sequence number.
        seq: u64,
        /// r0..r12.
        regs: [u32; 13],
    },
    /// `VisorEvent::CrashStack`: stack words of the crash before it.
    Stack {
        /// The event's log sequence number.
        seq: u64,
        /// Byte offset from the crash's `sp`.
        offset: u16,
        /// The words that were read (`len` of the event; at most [`CRASH_CHUNK_WORDS`]).
        words: Vec<u32>,
    },
}

impl CrashPart {
    /// The log sequence number of the event it came from.
    pub fn seq(&self) -> u64 {
        match *self {
            CrashPart::Crash { seq, .. } | CrashPart::Regs { seq, .. } | CrashPart::Stack { seq, .. } => seq,
        }
    }
}

/// Whether a stack chunk of `words` words at byte `offset` is appended to a dump whose stored
/// stack holds `stored` bytes: it must hold 1..=[`CRASH_CHUNK_WORDS`] words, start exactly where
/// the stored stack ends, follow only full chunks (a short chunk ended the dump) and keep the
/// stack within [`CRASH_DUMP_BYTES`].
pub fn continues(stored: usize, offset: u16, words: usize) -> bool {
    let chunk = 4 * CRASH_CHUNK_WORDS;
    (1..=CRASH_CHUNK_WORDS).contains(&words)
        && stored % chunk == 0
        && offset as usize == stored
        && stored + 4 * words <= CRASH_DUMP_BYTES
}

/// The stack words as stored: little-endian, contiguous (as they are in the device's memory).
pub fn stack_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The name of a fault kind (`keel_abi::FaultKind`): `HardFault`, `BusFault`, ..., `Watchdog`,
/// `Reset`; `kind 0x...` for a code this server does not know.
pub fn kind_name(kind: u32) -> String {
    match keel_abi::FaultKind::from_u32(kind) {
        Some(k) => k.name().to_string(),
        None => format!("kind {kind:#x}"),
    }
}

/// A stored crash dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crash {
    /// `cr-` + 12 hex digits.
    pub id: String,
    /// The device.
    pub device_id: String,
    /// Its account.
    pub account_id: String,
    /// When the server received the crash event, µs since the epoch.
    pub received_at: i64,
    /// Device time of the crash event (µs since its boot).
    pub device_time_us: u64,
    /// Log sequence number of the crash event.
    pub seq: u64,
    /// What the crash event reported (its `stack` words are not stored: see `stack`).
    pub info: CrashInfo,
    /// r0..r12, once the registers event came.
    pub regs: Option<[u32; 13]>,
    /// The app's stack from `info.sp` upwards, as far as it arrived.
    pub stack: Vec<u8>,
    /// The app (name, version) the device announced in its hello when the crash arrived.
    pub app: Option<(String, String)>,
}

/// The columns of a [`Crash`], as [`crash_from_row`] reads them.
macro_rules! crash_columns {
    () => {
        "id, device_id, account_id, received_at, device_time_us, seq, kind, pc, lr, sp, xpsr, cfsr, hfsr, sfsr, \
         bfar, exc_return, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, stack, app_name, app_version"
    };
}

fn crash_from_row(r: &sqlx::any::AnyRow) -> Result<Crash, Error> {
    let u32_of = |name: &str| -> Result<u32, Error> { Ok(r.try_get::<i64, _>(name)? as u32) };
    let mut regs = [None; 13];
    for (i, reg) in regs.iter_mut().enumerate() {
        *reg = r.try_get::<Option<i64>, _>(format!("r{i}").as_str())?.map(|v| v as u32);
    }
    let regs = regs.iter().all(Option::is_some).then(|| regs.map(|r| r.unwrap_or(0)));
    let stack: String = r.try_get("stack")?;
    let app_name: Option<String> = r.try_get("app_name")?;
    let app_version: Option<String> = r.try_get("app_version")?;
    Ok(Crash {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        account_id: r.try_get("account_id")?,
        received_at: r.try_get("received_at")?,
        device_time_us: r.try_get::<i64, _>("device_time_us")? as u64,
        seq: r.try_get::<i64, _>("seq")? as u64,
        info: CrashInfo {
            kind: u32_of("kind")?,
            pc: u32_of("pc")?,
            lr: u32_of("lr")?,
            sp: u32_of("sp")?,
            xpsr: u32_of("xpsr")?,
            cfsr: u32_of("cfsr")?,
            hfsr: u32_of("hfsr")?,
            sfsr: u32_of("sfsr")?,
            bfar: u32_of("bfar")?,
            exc_return: u32_of("exc_return")?,
            ..Default::default()
        },
        regs,
        stack: unhex(&stack).ok_or_else(|| Error::Decode("stored crash stack is not hex".into()))?,
        app: app_name.zip(app_version),
    })
}

fn random_id() -> Result<String, Error> {
    let mut raw = [0u8; 6];
    getrandom::getrandom(&mut raw).map_err(|e| Error::Protocol(format!("no randomness: {e}")))?;
    Ok(format!("cr-{}", hex(&raw)))
}

/// The sequence numbers of a boot: `[boot << 32, seq)` holds the records of `seq`'s boot before it.
fn boot_start(seq: u64) -> i64 {
    ((seq >> 32) << 32) as i64
}

impl Store {
    /// Applies one crash dump part of `device_id` in the group's transaction (see the module's
    /// rules); returns whether it changed anything.
    pub(crate) async fn apply_crash_part(
        c: &mut sqlx::AnyConnection,
        device_id: &str,
        part: &CrashPart,
    ) -> Result<bool, Error> {
        match part {
            CrashPart::Crash { seq, device_time_us, received_at, info } => {
                // The app from the device's registry entry: what its hello announced.
                let done = sqlx::query(
                    "INSERT INTO crashes (id, device_id, account_id, received_at, device_time_us, seq, kind, pc, lr, \
                     sp, xpsr, cfsr, hfsr, sfsr, bfar, exc_return, stack, app_name, app_version) \
                     SELECT $1, d.id, d.account_id, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, '', \
                     d.app_name, d.app_version FROM devices d WHERE d.id = $15 \
                     ON CONFLICT (device_id, seq) DO NOTHING",
                )
                .bind(random_id()?)
                .bind(*received_at as i64)
                .bind(*device_time_us as i64)
                .bind(*seq as i64)
                .bind(info.kind as i64)
                .bind(info.pc as i64)
                .bind(info.lr as i64)
                .bind(info.sp as i64)
                .bind(info.xpsr as i64)
                .bind(info.cfsr as i64)
                .bind(info.hfsr as i64)
                .bind(info.sfsr as i64)
                .bind(info.bfar as i64)
                .bind(info.exc_return as i64)
                .bind(device_id)
                .execute(&mut *c)
                .await?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                sqlx::query(
                    "DELETE FROM crashes WHERE device_id = $1 AND id NOT IN (SELECT id FROM crashes \
                     WHERE device_id = $1 ORDER BY received_at DESC, seq DESC LIMIT $2)",
                )
                .bind(device_id)
                .bind(MAX_CRASHES_PER_DEVICE as i64)
                .execute(&mut *c)
                .await?;
                Ok(true)
            }
            CrashPart::Regs { seq, regs } => {
                // Taken once, by the newest crash of the same boot before it.
                let mut query = sqlx::query(
                    "UPDATE crashes SET r0 = $1, r1 = $2, r2 = $3, r3 = $4, r4 = $5, r5 = $6, r6 = $7, r7 = $8, \
                     r8 = $9, r9 = $10, r10 = $11, r11 = $12, r12 = $13 WHERE r0 IS NULL AND id = (SELECT id \
                     FROM crashes WHERE device_id = $14 AND seq < $15 AND seq >= $16 ORDER BY seq DESC LIMIT 1)",
                );
                for r in regs {
                    query = query.bind(*r as i64);
                }
                let done = query.bind(device_id).bind(*seq as i64).bind(boot_start(*seq)).execute(&mut *c).await?;
                Ok(done.rows_affected() > 0)
            }
            CrashPart::Stack { seq, offset, words } => {
                let row = sqlx::query(
                    "SELECT id, stack FROM crashes WHERE device_id = $1 AND seq < $2 AND seq >= $3 \
                     ORDER BY seq DESC LIMIT 1",
                )
                .bind(device_id)
                .bind(*seq as i64)
                .bind(boot_start(*seq))
                .fetch_optional(&mut *c)
                .await?;
                let Some(row) = row else { return Ok(false) };
                let (id, stored): (String, String) = (row.try_get("id")?, row.try_get("stack")?);
                if !continues(stored.len() / 2, *offset, words.len()) {
                    return Ok(false);
                }
                // Guarded by the stack as read: a concurrent writer's chunk is not overwritten.
                let done = sqlx::query("UPDATE crashes SET stack = $1 WHERE id = $2 AND stack = $3")
                    .bind(format!("{stored}{}", hex(&stack_bytes(words))))
                    .bind(&id)
                    .bind(&stored)
                    .execute(&mut *c)
                    .await?;
                Ok(done.rows_affected() > 0)
            }
        }
    }

    /// The crash dumps of an account's device, newest first (at most
    /// [`MAX_CRASHES_PER_DEVICE`]).
    pub async fn crashes(&self, account_id: &str, device_id: &str) -> Result<Vec<Crash>, Error> {
        let q = concat!(
            "SELECT ",
            crash_columns!(),
            " FROM crashes WHERE device_id = $1 AND account_id = $2 ORDER BY received_at DESC, seq DESC LIMIT $3"
        );
        let rows = sqlx::query(q)
            .bind(device_id)
            .bind(account_id)
            .bind(MAX_CRASHES_PER_DEVICE as i64)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(crash_from_row).collect()
    }

    /// One crash dump of an account's device.
    pub async fn crash(&self, account_id: &str, device_id: &str, crash_id: &str) -> Result<Option<Crash>, Error> {
        let q =
            concat!("SELECT ", crash_columns!(), " FROM crashes WHERE id = $1 AND device_id = $2 AND account_id = $3");
        let row = sqlx::query(q).bind(crash_id).bind(device_id).bind(account_id).fetch_optional(&self.reader).await?;
        row.as_ref().map(crash_from_row).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_appended_only_where_the_stack_ends() {
        // In order: 0, 64, 128 ... up to the limit.
        assert!(continues(0, 0, 16));
        assert!(continues(64, 64, 16));
        assert!(continues(320, 320, 16));
        assert!(continues(128, 128, 3));
        // A gap, a duplicate, an overlap.
        assert!(!continues(0, 64, 16));
        assert!(!continues(64, 0, 16));
        assert!(!continues(128, 64, 16));
        assert!(!continues(128, 100, 16));
        // After a short chunk the dump has ended, even at the right offset.
        assert!(!continues(140, 140, 16));
        assert!(!continues(140, 128, 16));
        // Beyond CRASH_DUMP_BYTES, empty or oversized chunks.
        assert!(!continues(384, 384, 1));
        assert!(!continues(0, 0, 0));
        assert!(!continues(0, 0, 17));
        assert!(!continues(u16::MAX as usize + 1 - 64, u16::MAX, 16));
    }

    #[test]
    fn stack_bytes_are_little_endian_and_kinds_are_named() {
        assert_eq!(stack_bytes(&[0x0403_0201, 0xDDCC_BBAA]), [1, 2, 3, 4, 0xAA, 0xBB, 0xCC, 0xDD]);
        assert_eq!(kind_name(3), "HardFault");
        assert_eq!(kind_name(0x100), "Watchdog");
        assert_eq!(kind_name(99), "kind 0x63");
    }
}
