//! [`SeqLog`]: the latest value of a small record, kept power-safe in two flash pages.
//!
//! Each write appends a 16-byte record `{magic, seq, value, crc32}` to the page holding the newest
//! record. When that page is full, the *other* page is erased and the record starts it. The newest
//! valid record (highest `seq`, good CRC) always survives a power cut at any point: an
//! interrupted append leaves a torn unit that fails its CRC and is skipped, and the page with the
//! previous newest record is never erased while it is the only copy.

use crate::{crc32, FlashError, Medium, Nor, ERASED, PAGE_SIZE, PROGRAM_UNIT};

const MAGIC: u32 = 0x314C_534B; // "KSL1" little endian
const UNITS_PER_PAGE: u32 = PAGE_SIZE / PROGRAM_UNIT;

/// A decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRecord {
    /// Sequence number, incremented on every write.
    pub seq: u32,
    /// The stored value.
    pub value: u32,
}

/// The two-page store. `base` is the offset of its first page.
#[derive(Clone, Copy, Debug)]
pub struct SeqLog {
    base: u32,
}

struct Scan {
    latest: Option<(SeqRecord, u32)>, // record, page index
    /// First free unit after the last written unit, per page (None = page full).
    next_free: [Option<u32>; 2],
}

fn encode(r: SeqRecord) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&r.seq.to_le_bytes());
    b[8..12].copy_from_slice(&r.value.to_le_bytes());
    let c = crc32(&b[0..12]);
    b[12..16].copy_from_slice(&c.to_le_bytes());
    b
}

fn decode(b: &[u8; 16]) -> Option<SeqRecord> {
    let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if w(0) != MAGIC || w(12) != crc32(&b[0..12]) {
        return None;
    }
    Some(SeqRecord { seq: w(4), value: w(8) })
}

impl SeqLog {
    /// A store occupying the two pages at `base` (page aligned).
    pub const fn new(base: u32) -> Self {
        SeqLog { base }
    }

    fn scan<M: Medium>(&self, f: &Nor<M>) -> Result<Scan, FlashError> {
        let mut s = Scan { latest: None, next_free: [Some(0), Some(0)] };
        for page in 0..2u32 {
            let mut last_used: Option<u32> = None;
            for unit in 0..UNITS_PER_PAGE {
                let mut b = [0u8; 16];
                f.read(self.base + page * PAGE_SIZE + unit * PROGRAM_UNIT, &mut b)?;
                if b.iter().all(|&x| x == ERASED) {
                    continue;
                }
                last_used = Some(unit);
                if let Some(r) = decode(&b) {
                    if s.latest.is_none_or(|(l, _)| r.seq > l.seq) {
                        s.latest = Some((r, page));
                    }
                }
            }
            s.next_free[page as usize] = match last_used {
                None => Some(0),
                Some(u) if u + 1 < UNITS_PER_PAGE => Some(u + 1),
                Some(_) => None,
            };
        }
        Ok(s)
    }

    /// The newest valid record, if any.
    pub fn latest<M: Medium>(&self, f: &Nor<M>) -> Result<Option<SeqRecord>, FlashError> {
        Ok(self.scan(f)?.latest.map(|(r, _)| r))
    }

    /// Stores `value` as the newest record and returns it.
    pub fn write<M: Medium>(&self, f: &mut Nor<M>, value: u32) -> Result<SeqRecord, FlashError> {
        let s = self.scan(f)?;
        let (seq, page, unit) = match s.latest {
            Some((l, p)) => {
                let seq = l.seq.wrapping_add(1);
                match s.next_free[p as usize] {
                    Some(u) => (seq, p, u),
                    None => {
                        let other = 1 - p;
                        f.erase_page(self.base + other * PAGE_SIZE)?;
                        (seq, other, 0)
                    }
                }
            }
            None => {
                f.erase_page(self.base)?;
                (1, 0, 0)
            }
        };
        let r = SeqRecord { seq, value };
        f.program(self.base + page * PAGE_SIZE + unit * PROGRAM_UNIT, &encode(r))?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SliceMedium;

    extern crate std;
    use std::vec;

    #[test]
    fn empty_store_has_no_record_and_first_write_is_seq_1() {
        let mut mem = vec![0xFFu8; 2 * PAGE_SIZE as usize];
        let mut f = Nor::new(SliceMedium(&mut mem));
        let log = SeqLog::new(0);
        assert_eq!(log.latest(&f).unwrap(), None);
        assert_eq!(log.write(&mut f, 7).unwrap(), SeqRecord { seq: 1, value: 7 });
        assert_eq!(log.latest(&f).unwrap(), Some(SeqRecord { seq: 1, value: 7 }));
    }

    #[test]
    fn garbage_pages_are_erased_before_first_use() {
        let mut mem = vec![0u8; 2 * PAGE_SIZE as usize];
        let mut f = Nor::new(SliceMedium(&mut mem));
        let log = SeqLog::new(0);
        assert_eq!(log.latest(&f).unwrap(), None);
        log.write(&mut f, 1).unwrap();
        assert_eq!(log.latest(&f).unwrap().unwrap().value, 1);
    }

    #[test]
    fn many_writes_wrap_between_pages_and_keep_the_newest() {
        let mut mem = vec![0xFFu8; 2 * PAGE_SIZE as usize];
        let mut f = Nor::new(SliceMedium(&mut mem));
        let log = SeqLog::new(0);
        let n = 3 * UNITS_PER_PAGE + 5;
        for i in 0..n {
            log.write(&mut f, i * 3).unwrap();
            assert_eq!(log.latest(&f).unwrap(), Some(SeqRecord { seq: i + 1, value: i * 3 }));
        }
        // One erase per page switch, never more.
        assert_eq!(f.stats().erases, 1 + 3);
    }

    #[test]
    fn torn_record_is_skipped_and_next_write_goes_after_it() {
        let mut mem = vec![0xFFu8; 2 * PAGE_SIZE as usize];
        {
            let mut f = Nor::new(SliceMedium(&mut mem));
            let log = SeqLog::new(0);
            log.write(&mut f, 10).unwrap();
        }
        // Simulate a power cut in the middle of programming unit 1: half of it written.
        let mut torn = encode(SeqRecord { seq: 2, value: 11 });
        torn[8..].fill(0xFF);
        mem[16..32].copy_from_slice(&torn);
        let mut f = Nor::new(SliceMedium(&mut mem));
        let log = SeqLog::new(0);
        assert_eq!(log.latest(&f).unwrap(), Some(SeqRecord { seq: 1, value: 10 }));
        assert_eq!(log.write(&mut f, 12).unwrap(), SeqRecord { seq: 2, value: 12 });
        assert_eq!(log.latest(&f).unwrap().unwrap().value, 12);
    }

    #[test]
    fn power_cut_during_page_switch_keeps_previous_value() {
        let mut mem = vec![0xFFu8; 2 * PAGE_SIZE as usize];
        {
            let mut f = Nor::new(SliceMedium(&mut mem));
            let log = SeqLog::new(0);
            for i in 0..UNITS_PER_PAGE {
                log.write(&mut f, i).unwrap();
            }
        }
        // Page 0 is full. Cut power after the erase of page 1 (half-erased: some garbage left).
        mem[PAGE_SIZE as usize..PAGE_SIZE as usize + 100].fill(0x00);
        let mut f = Nor::new(SliceMedium(&mut mem));
        let log = SeqLog::new(0);
        assert_eq!(log.latest(&f).unwrap().unwrap().value, UNITS_PER_PAGE - 1);
        log.write(&mut f, 999).unwrap();
        assert_eq!(log.latest(&f).unwrap().unwrap().value, 999);
    }
}
