//! The GDB remote serial protocol's framing: `$payload#cs` packets, `+`/`-` acknowledgements
//! (until `QStartNoAckMode`), the interrupt byte `0x03`, and the `}` escape of binary data.

/// Something that came from gdb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A packet's payload (escapes removed, checksum verified).
    Packet(Vec<u8>),
    /// `0x03` outside a packet: Ctrl-C.
    Interrupt,
    /// `+`.
    Ack,
    /// `-`: gdb wants the last packet again.
    Nack,
    /// A packet with a wrong checksum (answer `-` in acknowledgement mode).
    Corrupt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Body,
    Escape,
    Sum1,
    Sum2(u8),
}

/// Splits gdb's byte stream into [`Input`]s.
#[derive(Debug)]
pub struct Framer {
    state: State,
    body: Vec<u8>,
    sum: u8,
}

/// Largest packet accepted (what `qSupported` announces as `PacketSize`).
pub const PACKET_SIZE: usize = 0x1000;

impl Default for Framer {
    fn default() -> Self {
        Framer { state: State::Idle, body: Vec::new(), sum: 0 }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

impl Framer {
    /// Feeds bytes, appending what they complete to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Input>) {
        for &b in bytes {
            self.state = match self.state {
                State::Idle => match b {
                    b'$' => {
                        self.body.clear();
                        self.sum = 0;
                        State::Body
                    }
                    0x03 => {
                        out.push(Input::Interrupt);
                        State::Idle
                    }
                    b'+' => {
                        out.push(Input::Ack);
                        State::Idle
                    }
                    b'-' => {
                        out.push(Input::Nack);
                        State::Idle
                    }
                    _ => State::Idle, // noise between packets
                },
                State::Body | State::Escape if b == b'$' => {
                    // A new packet starts inside one: the old one was cut short.
                    self.body.clear();
                    self.sum = 0;
                    State::Body
                }
                State::Body => match b {
                    b'#' => State::Sum1,
                    b'}' => {
                        self.sum = self.sum.wrapping_add(b);
                        State::Escape
                    }
                    _ => {
                        self.sum = self.sum.wrapping_add(b);
                        self.push(b);
                        State::Body
                    }
                },
                State::Escape => {
                    self.sum = self.sum.wrapping_add(b);
                    self.push(b ^ 0x20);
                    State::Body
                }
                State::Sum1 => match hex_val(b) {
                    Some(h) => State::Sum2(h),
                    None => {
                        out.push(Input::Corrupt);
                        State::Idle
                    }
                },
                State::Sum2(h) => {
                    match hex_val(b) {
                        Some(l) if (h << 4 | l) == self.sum => out.push(Input::Packet(std::mem::take(&mut self.body))),
                        _ => out.push(Input::Corrupt),
                    }
                    State::Idle
                }
            };
        }
    }

    fn push(&mut self, b: u8) {
        // Bounded: a packet larger than announced is cut (and then fails to parse).
        if self.body.len() < 4 * PACKET_SIZE {
            self.body.push(b);
        }
    }
}

/// Frames `payload` as `$...#cs`, escaping `$`, `#`, `}` and `*`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.push(b'$');
    let mut sum = 0u8;
    for &b in payload {
        if matches!(b, b'$' | b'#' | b'}' | b'*') {
            out.push(b'}');
            out.push(b ^ 0x20);
            sum = sum.wrapping_add(b'}').wrapping_add(b ^ 0x20);
        } else {
            out.push(b);
            sum = sum.wrapping_add(b);
        }
    }
    out.extend_from_slice(format!("#{sum:02x}").as_bytes());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The bytes of hex text (`None` if not an even number of hex digits).
pub fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2).map(|c| Some(hex_val(c[0])? << 4 | hex_val(c[1])?)).collect()
}

/// A hex number (at most 8 digits).
pub fn parse_hex_u32(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 8 {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(text).ok()?, 16).ok()
}

/// A register value as gdb wants it: the target's (little-endian) byte order, in hex.
pub fn hex_u32_le(v: u32) -> String {
    hex(&v.to_le_bytes())
}

/// A register value from [`hex_u32_le`] text.
pub fn parse_u32_le(text: &[u8]) -> Option<u32> {
    let b = unhex(text)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// One chunk of a `qXfer` object: `m` + data if more follows, `l` + data at its end.
pub fn xfer_chunk(object: &[u8], offset: usize, len: usize) -> Vec<u8> {
    let start = offset.min(object.len());
    let end = start.saturating_add(len).min(object.len());
    let mut out = vec![if end < object.len() { b'm' } else { b'l' }];
    out.extend_from_slice(&object[start..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(bytes: &[u8]) -> Vec<Input> {
        let mut f = Framer::default();
        let mut out = Vec::new();
        f.feed(bytes, &mut out);
        out
    }

    #[test]
    fn packets_acks_and_interrupts() {
        assert_eq!(
            inputs(b"+$g#67\x03-$qC#b4"),
            vec![
                Input::Ack,
                Input::Packet(b"g".to_vec()),
                Input::Interrupt,
                Input::Nack,
                Input::Packet(b"qC".to_vec())
            ]
        );
        assert_eq!(inputs(b"$g#68"), vec![Input::Corrupt]);
        assert_eq!(inputs(b"$g#zz"), vec![Input::Corrupt]);
        assert_eq!(inputs(b"$qTStatus#49"), vec![Input::Packet(b"qTStatus".to_vec())]);
        // Upper-case checksum digits are fine too.
        assert_eq!(inputs(b"$qC#B4"), vec![Input::Packet(b"qC".to_vec())]);
    }

    #[test]
    fn split_across_reads() {
        let mut f = Framer::default();
        let mut out = Vec::new();
        let framed = frame(b"m200000,4");
        assert_eq!(&framed[framed.len() - 3..], b"#ef");
        for b in framed {
            f.feed(&[b], &mut out);
        }
        assert_eq!(out, vec![Input::Packet(b"m200000,4".to_vec())]);
    }

    #[test]
    fn binary_escapes_round_trip() {
        let data = [b'X', b'1', b',', b'4', b':', b'#', b'$', b'}', b'*', 0x03, 0];
        let framed = frame(&data);
        assert_eq!(&framed[..6], b"$X1,4:");
        assert_eq!(&framed[6..14], &[b'}', b'#' ^ 0x20, b'}', b'$' ^ 0x20, b'}', b'}' ^ 0x20, b'}', b'*' ^ 0x20]);
        // 0x03 inside a packet is data, not an interrupt.
        assert_eq!(inputs(&framed), vec![Input::Packet(data.to_vec())]);
    }

    #[test]
    fn a_restarted_packet_wins() {
        assert_eq!(inputs(b"$gar$g#67"), vec![Input::Packet(b"g".to_vec())]);
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex(b"00AB10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex(b"0"), None);
        assert_eq!(unhex(b"zz"), None);
        assert_eq!(hex_u32_le(0x0020_0101), "01012000");
        assert_eq!(parse_u32_le(b"01012000"), Some(0x0020_0101));
        assert_eq!(parse_hex_u32(b"28000000"), Some(0x2800_0000));
        assert_eq!(parse_hex_u32(b"123456789"), None);
        assert_eq!(xfer_chunk(b"abcdef", 0, 4), b"mabcd".to_vec());
        assert_eq!(xfer_chunk(b"abcdef", 4, 4), b"lef".to_vec());
        assert_eq!(xfer_chunk(b"abcdef", 9, 4), b"l".to_vec());
    }
}
