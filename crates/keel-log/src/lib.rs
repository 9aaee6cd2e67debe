//! # Keel log ring
//!
//! The visor keeps app log lines and its own events in a fixed-size ring in secure RAM until the
//! server has acknowledged them: delivered at least once, never silently lost.
//!
//! * Every record gets a sequence number when it is pushed. Numbers are `boot << 32 | n`, so they
//!   stay unique and ordered across reboots of the device (the boot counter is persistent) and
//!   the server can de-duplicate and order them.
//! * When a new record does not fit, the **oldest** records are dropped and counted; the sender
//!   reports the count with the next batch ([`LogRing::dropped`]) and the server records a
//!   "dropped N" event. A record larger than [`MAX_TEXT`] is refused with an error (the app gets
//!   a clear status code), never truncated silently.
//! * App text is untrusted: [`LogRing::push_app`] escapes it ([`escape`]: every control byte,
//!   DEL, backslash and byte that is not UTF-8 becomes `\xNN`, `\\` or `\t`, so an app line
//!   can never carry a line break or a terminal escape to the operator) and keeps **reserved
//!   room** for the visor: app records may fill at most [`LogRing::app_capacity`] (3/4 of the
//!   ring) and never push a visor record out. An app record that does not fit is dropped itself
//!   (newest-drop, counted like any drop). A flood of app lines while the link is down therefore
//!   cannot evict the visor's boot, crash and update events before they are sent.
//! * The link reads records from any sequence number on ([`LogRing::iter_from`]), so a batch can
//!   be re-sent after a reconnect, and releases them with [`LogRing::ack`].
//!
//! The ring stores records back to back as `len:u16 | kind:u8 | level:u8 | time_us:u64 | text`,
//! wrapping at the end of the buffer; it never allocates and never panics.
#![no_std]

/// Largest text of one record, in bytes.
pub const MAX_TEXT: usize = 512;
const HDR: usize = 12;

/// What produced a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A line logged by the app.
    App = 0,
    /// A text line of the visor.
    Visor = 1,
    /// A structured visor event: the record's bytes are a `keel_proto::event::VisorEvent`
    /// encoding (boot, crash report, link loss, update outcome, ...), sent as `Up::Event`.
    Event = 2,
}

impl Kind {
    /// The kind stored as `v` (an unknown value reads as [`Kind::Visor`]).
    pub fn from_u8(v: u8) -> Kind {
        match v {
            0 => Kind::App,
            2 => Kind::Event,
            _ => Kind::Visor,
        }
    }
}

/// A record as read back from the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Producer.
    pub kind: Kind,
    /// Level (the ABI's `LogLevel` value for app lines).
    pub level: u8,
    /// Monotonic time of the record in microseconds.
    pub time_us: u64,
    /// The text, in at most two pieces (the ring may wrap inside it).
    pub text: (&'a [u8], &'a [u8]),
}

impl Record<'_> {
    /// Copies the text into `out`; returns its length.
    pub fn copy_text(&self, out: &mut [u8]) -> usize {
        let (a, b) = self.text;
        let n = (a.len() + b.len()).min(out.len());
        let na = a.len().min(n);
        out[..na].copy_from_slice(&a[..na]);
        out[na..n].copy_from_slice(&b[..n - na]);
        n
    }
}

/// Errors of [`LogRing::push`] and [`LogRing::push_app`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The text is longer than [`MAX_TEXT`].
    TooLong,
    /// An app record found no room within the app's share of the ring ([`LogRing::push_app`]):
    /// it was dropped and counted in [`LogRing::dropped`].
    NoRoom,
}

/// Writes `text` escaped into `out` and returns the length written: printable ASCII and valid
/// UTF-8 stay as they are; a backslash becomes `\\`, a tab `\t`, and every other control byte
/// (0x00-0x1F, 0x7F), every byte of a UTF-8 encoded C1 control (U+0080-U+009F) and every byte
/// that is not part of valid UTF-8 becomes `\xNN` (lower-case hex). The output is valid UTF-8
/// without control characters. It stops before an escape that does not fit whole, so a
/// truncated output is still well formed.
pub fn escape(text: &[u8], out: &mut [u8]) -> usize {
    let mut n = 0;
    let mut put = |piece: &[u8], n: &mut usize| -> bool {
        if *n + piece.len() > out.len() {
            return false;
        }
        out[*n..*n + piece.len()].copy_from_slice(piece);
        *n += piece.len();
        true
    };
    let hex = |b: u8| {
        const H: &[u8; 16] = b"0123456789abcdef";
        [b'\\', b'x', H[(b >> 4) as usize], H[(b & 15) as usize]]
    };
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            let mut utf8 = [0u8; 4];
            let bytes = c.encode_utf8(&mut utf8).as_bytes();
            let ok = match c {
                '\\' => put(b"\\\\", &mut n),
                '\t' => put(b"\\t", &mut n),
                '\u{0}'..='\u{1f}' | '\u{7f}' => put(&hex(c as u8), &mut n),
                '\u{80}'..='\u{9f}' => {
                    let (a, b) = (hex(bytes[0]), hex(bytes[1]));
                    put(&[a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]], &mut n)
                }
                _ => put(bytes, &mut n),
            };
            if !ok {
                return n;
            }
        }
        for &b in chunk.invalid() {
            if !put(&hex(b), &mut n) {
                return n;
            }
        }
    }
    n
}

/// The ring, `N` bytes of storage.
pub struct LogRing<const N: usize> {
    buf: [u8; N],
    head: usize,
    used: usize,
    first_seq: u64,
    next_seq: u64,
    count: usize,
    dropped: u64,
    /// Bytes held by [`Kind::App`] records (headers included).
    app_used: usize,
}

impl<const N: usize> LogRing<N> {
    /// An empty ring whose first record will get sequence number `boot << 32`.
    pub const fn new(boot: u32) -> Self {
        let s = (boot as u64) << 32;
        LogRing { buf: [0; N], head: 0, used: 0, first_seq: s, next_seq: s, count: 0, dropped: 0, app_used: 0 }
    }

    /// Bytes app records may occupy at most (headers included): 3/4 of the ring. The rest is
    /// reserved for the visor's records.
    pub const fn app_capacity() -> usize {
        N - N / 4
    }

    /// Bytes held by app records.
    pub fn app_bytes_used(&self) -> usize {
        self.app_used
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if no record is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes in use.
    pub fn bytes_used(&self) -> usize {
        self.used
    }

    /// Sequence number of the oldest record held (or of the next one if empty).
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records dropped because the ring was full and not yet reported with [`LogRing::take_dropped`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Returns and resets the dropped count (call when the server acknowledged a report of it).
    pub fn take_dropped(&mut self) -> u64 {
        core::mem::take(&mut self.dropped)
    }

    fn byte(&self, off: usize) -> u8 {
        self.buf[(self.head + off) % N]
    }

    fn record_len_at(&self, off: usize) -> usize {
        HDR + u16::from_le_bytes([self.byte(off), self.byte(off + 1)]) as usize
    }

    fn drop_oldest(&mut self) {
        let len = self.record_len_at(0);
        if Kind::from_u8(self.byte(2)) == Kind::App {
            self.app_used -= len;
        }
        self.head = (self.head + len) % N;
        self.used -= len;
        self.count -= 1;
        self.first_seq += 1;
    }

    /// Appends a record as given and returns its sequence number, dropping the oldest records
    /// if needed. For the visor's own (trusted) records; app text goes through
    /// [`LogRing::push_app`].
    pub fn push(&mut self, kind: Kind, level: u8, time_us: u64, text: &[u8]) -> Result<u64, PushError> {
        if text.len() > MAX_TEXT || HDR + text.len() > N {
            return Err(PushError::TooLong);
        }
        let need = HDR + text.len();
        while N - self.used < need {
            self.drop_oldest();
            self.dropped += 1;
        }
        Ok(self.append(kind, level, time_us, text))
    }

    /// Appends an app log line: `text` (at most [`MAX_TEXT`] bytes, else [`PushError::TooLong`])
    /// is [`escape`]d and truncated to [`MAX_TEXT`], then stored as a [`Kind::App`] record if it
    /// fits within [`LogRing::app_capacity`] and in the ring without dropping anything but older
    /// app records. Otherwise the line itself is dropped (counted in [`LogRing::dropped`]) and
    /// the answer is [`PushError::NoRoom`]: app lines never push visor records out.
    pub fn push_app(&mut self, level: u8, time_us: u64, text: &[u8]) -> Result<u64, PushError> {
        if text.len() > MAX_TEXT {
            return Err(PushError::TooLong);
        }
        let mut escaped = [0u8; MAX_TEXT];
        let len = escape(text, &mut escaped);
        let need = HDR + len;
        if self.app_used + need > Self::app_capacity() {
            self.dropped += 1;
            return Err(PushError::NoRoom);
        }
        while N - self.used < need {
            if self.count == 0 || Kind::from_u8(self.byte(2)) != Kind::App {
                self.dropped += 1;
                return Err(PushError::NoRoom);
            }
            self.drop_oldest();
            self.dropped += 1;
        }
        Ok(self.append(Kind::App, level, time_us, &escaped[..len]))
    }

    /// Writes a record that fits.
    fn append(&mut self, kind: Kind, level: u8, time_us: u64, text: &[u8]) -> u64 {
        let need = HDR + text.len();
        let mut hdr = [0u8; HDR];
        hdr[0..2].copy_from_slice(&(text.len() as u16).to_le_bytes());
        hdr[2] = kind as u8;
        hdr[3] = level;
        hdr[4..12].copy_from_slice(&time_us.to_le_bytes());
        let start = (self.head + self.used) % N;
        for (i, b) in hdr.iter().chain(text.iter()).enumerate() {
            self.buf[(start + i) % N] = *b;
        }
        self.used += need;
        if kind == Kind::App {
            self.app_used += need;
        }
        self.count += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Releases every record with a sequence number `<= upto` (the server has stored them).
    pub fn ack(&mut self, upto: u64) {
        while self.count > 0 && self.first_seq <= upto {
            self.drop_oldest();
        }
    }

    /// Iterates over the records with sequence numbers `>= from`, oldest first.
    pub fn iter_from(&self, from: u64) -> Iter<'_, N> {
        let mut it = Iter { ring: self, off: 0, seq: self.first_seq, left: self.count };
        while it.left > 0 && it.seq < from {
            it.off += self.record_len_at(it.off);
            it.seq += 1;
            it.left -= 1;
        }
        it
    }
}

/// Iterator over records, see [`LogRing::iter_from`].
pub struct Iter<'a, const N: usize> {
    ring: &'a LogRing<N>,
    off: usize,
    seq: u64,
    left: usize,
}

impl<'a, const N: usize> Iterator for Iter<'a, N> {
    type Item = Record<'a>;
    fn next(&mut self) -> Option<Record<'a>> {
        if self.left == 0 {
            return None;
        }
        let r = self.ring;
        let len = r.record_len_at(self.off) - HDR;
        let mut t = [0u8; 8];
        for (i, b) in t.iter_mut().enumerate() {
            *b = r.byte(self.off + 4 + i);
        }
        let start = (r.head + self.off + HDR) % N;
        let first = len.min(N - start);
        let text = (&r.buf[start..start + first], &r.buf[..len - first]);
        let rec = Record {
            seq: self.seq,
            kind: Kind::from_u8(r.byte(self.off + 2)),
            level: r.byte(self.off + 3),
            time_us: u64::from_le_bytes(t),
            text,
        };
        self.off += HDR + len;
        self.seq += 1;
        self.left -= 1;
        Some(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Record<'_>) -> [u8; 64] {
        let mut out = [0u8; 64];
        r.copy_text(&mut out);
        out
    }

    #[test]
    fn push_iterate_ack() {
        let mut r = LogRing::<256>::new(3);
        let s0 = r.push(Kind::App, 2, 10, b"first").unwrap();
        let s1 = r.push(Kind::Visor, 1, 20, b"second").unwrap();
        assert_eq!(s0, 3 << 32);
        assert_eq!(s1, s0 + 1);
        let v: [Record<'_>; 2] = {
            let mut it = r.iter_from(0);
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(&text(&v[0])[..5], b"first");
        assert_eq!((v[1].kind, v[1].level, v[1].time_us), (Kind::Visor, 1, 20));
        assert_eq!(r.iter_from(s1).count(), 1);
        r.ack(s0);
        assert_eq!(r.len(), 1);
        assert_eq!(r.first_seq(), s1);
        r.ack(u64::MAX);
        assert!(r.is_empty());
        assert_eq!(r.bytes_used(), 0);
    }

    #[test]
    fn event_records_keep_their_kind_and_bytes() {
        let mut r = LogRing::<64>::new(0);
        let s = r.push(Kind::Event, 0, 30, &[0x82, 0x03, 0x80]).unwrap();
        let kinds: [Kind; 3] = [Kind::App, Kind::Visor, Kind::Event];
        for k in kinds {
            assert_eq!(Kind::from_u8(k as u8), k);
        }
        let e = r.iter_from(s).next().unwrap();
        assert_eq!((e.kind, e.time_us), (Kind::Event, 30));
        assert_eq!(&text(&e)[..3], &[0x82, 0x03, 0x80]);
    }

    #[test]
    fn full_ring_drops_oldest_and_counts() {
        let mut r = LogRing::<100>::new(0);
        // Each record is 12 + 20 = 32 bytes: three fit.
        for i in 0..5u8 {
            r.push(Kind::App, 2, i as u64, &[b'a' + i; 20]).unwrap();
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.dropped(), 2);
        assert_eq!(r.first_seq(), 2);
        let first = r.iter_from(0).next().unwrap();
        assert_eq!(first.seq, 2);
        assert_eq!(text(&first)[0], b'c');
        assert_eq!(r.take_dropped(), 2);
        assert_eq!(r.dropped(), 0);
    }

    #[test]
    fn records_wrap_around_the_end_intact() {
        let mut r = LogRing::<50>::new(0);
        for i in 0..40u8 {
            let msg = [i; 13];
            let seq = r.push(Kind::App, 0, 0, &msg[..(i % 14) as usize]).unwrap();
            let rec = r.iter_from(seq).next().unwrap();
            let mut out = [0u8; 20];
            let n = rec.copy_text(&mut out);
            assert_eq!(&out[..n], &msg[..(i % 14) as usize]);
        }
    }

    #[test]
    fn oversized_records_are_refused() {
        let mut r = LogRing::<4096>::new(0);
        assert_eq!(r.push(Kind::App, 0, 0, &[0; MAX_TEXT + 1]), Err(PushError::TooLong));
        let mut small = LogRing::<32>::new(0);
        assert_eq!(small.push(Kind::App, 0, 0, &[0; 21]), Err(PushError::TooLong));
        assert!(small.push(Kind::App, 0, 0, &[0; 20]).is_ok());
    }

    fn escaped(text: &[u8]) -> ([u8; 256], usize) {
        let mut out = [0u8; 256];
        let n = escape(text, &mut out);
        (out, n)
    }

    #[test]
    fn app_text_is_escaped_so_it_cannot_forge_lines_or_drive_a_terminal() {
        let cases: [(&[u8], &[u8]); 8] = [
            (b"plain text: 42 %", b"plain text: 42 %"),
            (b"a\nb\r\x1b]0;x\x07", b"a\\x0ab\\x0d\\x1b]0;x\\x07"),
            (b"tab\there", b"tab\\there"),
            (b"back\\slash", b"back\\\\slash"),
            (b"\x00\x7f", b"\\x00\\x7f"),
            ("caf\u{e9} \u{2713}".as_bytes(), "caf\u{e9} \u{2713}".as_bytes()),
            ("c1 \u{9b}".as_bytes(), b"c1 \\xc2\\x9b"),
            (b"bad \xff\xc3", b"bad \\xff\\xc3"),
        ];
        for (input, want) in cases {
            let (out, n) = escaped(input);
            assert_eq!(&out[..n], want, "{:?}", core::str::from_utf8(input));
            let text = core::str::from_utf8(&out[..n]).expect("valid UTF-8");
            assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
        }
    }

    #[test]
    fn escaping_truncates_at_an_escape_boundary() {
        let mut out = [0u8; 6];
        assert_eq!(escape(b"ab\ncd", &mut out), 6);
        assert_eq!(&out, b"ab\\x0a");
        let mut out = [0u8; 5];
        assert_eq!(escape(b"ab\ncd", &mut out), 2, "never half an escape");
        let mut out = [0u8; 7];
        assert_eq!(escape("ab\u{85}".as_bytes(), &mut out), 2, "never half of an escaped C1 control");
    }

    #[test]
    fn app_records_are_escaped_and_truncated_to_the_max_text() {
        let mut r = LogRing::<4096>::new(0);
        let s = r.push_app(2, 5, b"ok\n       7 [   12.000000 visor] forged").unwrap();
        let rec = r.iter_from(s).next().unwrap();
        assert_eq!(rec.kind, Kind::App);
        let mut t = [0u8; 64];
        let n = rec.copy_text(&mut t);
        assert_eq!(&t[..n], b"ok\\x0a       7 [   12.000000 visor] forged");
        let s = r.push_app(2, 5, &[0x1b; MAX_TEXT]).unwrap();
        let rec = r.iter_from(s).next().unwrap();
        assert_eq!(rec.text.0.len() + rec.text.1.len(), MAX_TEXT, "4x longer once escaped: truncated");
        assert_eq!(r.push_app(2, 5, &[b'a'; MAX_TEXT + 1]), Err(PushError::TooLong));
        // Visor text is the visor's own: stored as is.
        let s = r.push(Kind::Visor, 1, 5, b"line\n").unwrap();
        let mut t = [0u8; 8];
        let n = r.iter_from(s).next().unwrap().copy_text(&mut t);
        assert_eq!(&t[..n], b"line\n");
    }

    #[test]
    fn app_records_fill_at_most_three_quarters_and_never_evict_visor_records() {
        let mut r = LogRing::<1024>::new(0);
        assert_eq!(LogRing::<1024>::app_capacity(), 768);
        let boot = r.push(Kind::Event, 0, 0, &[1; 20]).unwrap();
        // 12 + 52 = 64-byte app records: 12 fill the app share exactly.
        let mut stored = 0;
        for _ in 0..40 {
            match r.push_app(2, 0, &[b'x'; 52]) {
                Ok(_) => stored += 1,
                Err(e) => assert_eq!(e, PushError::NoRoom),
            }
        }
        assert_eq!(stored, 12);
        assert_eq!(r.app_bytes_used(), 768);
        assert_eq!(r.dropped(), 28, "the newest were dropped and counted");
        assert_eq!(r.first_seq(), boot, "the visor's record is still there");
        // Visor records fill the rest; app lines still cannot push them out.
        for _ in 0..7 {
            r.push(Kind::Visor, 1, 0, &[b'v'; 20]).unwrap();
        }
        assert_eq!(r.push_app(2, 0, b"more"), Err(PushError::NoRoom));
        assert_eq!(r.first_seq(), boot);
        // Once the server acknowledged them, app lines fit again.
        r.ack(u64::MAX);
        assert!(r.push_app(2, 0, b"again").is_ok());
        assert_eq!(r.app_bytes_used(), 12 + 5);
    }

    #[test]
    fn an_app_record_may_push_out_older_app_records_only() {
        let mut r = LogRing::<256>::new(0);
        // Visor 64 bytes, then app records of 32 bytes up to the 192-byte share.
        r.push(Kind::Visor, 1, 0, &[b'v'; 52]).unwrap();
        for _ in 0..6 {
            r.push_app(2, 0, &[b'a'; 20]).unwrap();
        }
        assert_eq!(r.bytes_used(), 256);
        r.ack(r.first_seq()); // the visor record is sent and acknowledged: 64 bytes free
        r.push(Kind::Visor, 1, 0, &[b'w'; 52]).unwrap();
        // Full again; the app share is full too: the new app line is dropped.
        assert_eq!(r.push_app(2, 0, &[b'b'; 20]), Err(PushError::NoRoom));
        // A visor record makes room by dropping the oldest (an app record here).
        r.push(Kind::Visor, 1, 0, &[b'z'; 20]).unwrap();
        assert_eq!(r.app_bytes_used(), 5 * 32);
        assert!(r.iter_from(0).filter(|x| x.kind == Kind::Visor).count() == 2);
    }

    #[test]
    fn sequence_numbers_never_repeat_within_a_boot_and_order_across_boots() {
        let mut a = LogRing::<64>::new(1);
        let mut last = 0;
        for _ in 0..100 {
            let s = a.push(Kind::App, 0, 0, b"x").unwrap();
            assert!(s > last || last == 0);
            last = s;
        }
        let mut b = LogRing::<64>::new(2);
        assert!(b.push(Kind::App, 0, 0, b"x").unwrap() > last);
    }
}

#[cfg(test)]
mod model_tests {
    extern crate std;
    use std::collections::VecDeque;
    use std::vec::Vec;

    use super::*;

    /// Random pushes, acks and reads against a simple model: the ring must hold exactly the
    /// newest records that fit, report the rest as dropped, and never lose an unacked record
    /// while there is room.
    #[test]
    fn matches_a_model_under_random_operations() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50 {
            let mut ring = LogRing::<300>::new(1);
            let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
            let mut dropped = 0u64;
            for _ in 0..2000 {
                match rnd() % 4 {
                    0 | 1 => {
                        let len = (rnd() % 60) as usize;
                        let text: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
                        let seq = ring.push(Kind::App, 1, 5, &text).unwrap();
                        model.push_back((seq, text));
                        while model.iter().map(|(_, t)| HDR + t.len()).sum::<usize>() > 300 {
                            model.pop_front();
                            dropped += 1;
                        }
                    }
                    2 => {
                        if let Some(&(s, _)) = model.get((rnd() % 4) as usize) {
                            ring.ack(s);
                            while model.front().is_some_and(|(m, _)| *m <= s) {
                                model.pop_front();
                            }
                        }
                    }
                    _ => {
                        assert_eq!(ring.take_dropped(), dropped);
                        dropped = 0;
                    }
                }
                assert_eq!(ring.len(), model.len());
                let got: Vec<(u64, Vec<u8>)> = ring
                    .iter_from(0)
                    .map(|r| {
                        let mut t = [0u8; 64];
                        let n = r.copy_text(&mut t);
                        (r.seq, t[..n].to_vec())
                    })
                    .collect();
                assert_eq!(got, model.iter().cloned().collect::<Vec<_>>());
            }
        }
    }
}
