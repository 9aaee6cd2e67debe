//! Length-prefixed frames: `u16` big-endian length, then the payload.
//!
//! [`Decoder`] is fed whatever bytes arrive and yields complete frames; it never allocates and
//! never panics on input. A declared length above the decoder's limit is an error: the caller
//! drops the connection (it cannot resynchronise a byte stream).

/// Size of the length prefix.
pub const HEADER_LEN: usize = 2;
/// Largest payload the format can express (and the Noise maximum message size).
pub const MAX_PAYLOAD: usize = 65_535;

/// Frame errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The peer announced a frame larger than this endpoint accepts.
    TooLarge {
        /// Announced length.
        len: usize,
        /// This endpoint's limit.
        limit: usize,
    },
    /// The output buffer cannot hold the frame.
    BufferTooSmall,
}

/// Writes `payload` as one frame into `out`; returns the number of bytes written.
pub fn encode(payload: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len: payload.len(), limit: MAX_PAYLOAD });
    }
    let total = HEADER_LEN + payload.len();
    if out.len() < total {
        return Err(FrameError::BufferTooSmall);
    }
    out[..HEADER_LEN].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    out[HEADER_LEN..total].copy_from_slice(payload);
    Ok(total)
}

/// Reassembles frames from a byte stream into a caller-provided buffer of `N` bytes (the limit
/// on payload size is `N`).
pub struct Decoder<const N: usize> {
    buf: [u8; N],
    header: [u8; HEADER_LEN],
    header_len: usize,
    want: Option<usize>,
    have: usize,
}

impl<const N: usize> Default for Decoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Decoder<N> {
    /// An empty decoder.
    pub const fn new() -> Self {
        Decoder { buf: [0; N], header: [0; HEADER_LEN], header_len: 0, want: None, have: 0 }
    }

    /// Consumes bytes from `input` until one frame is complete or `input` is exhausted.
    /// Returns how many bytes were consumed and, if a frame completed, its length; the frame is
    /// then available from [`Decoder::frame`] until the next call.
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<usize>), FrameError> {
        let mut used = 0;
        if self.want.is_none() && self.header_len == HEADER_LEN {
            // The previous call returned a frame; start the next one.
            self.header_len = 0;
        }
        while used < input.len() || self.want == Some(self.have) {
            match self.want {
                None => {
                    self.header[self.header_len] = input[used];
                    self.header_len += 1;
                    used += 1;
                    if self.header_len == HEADER_LEN {
                        let len = u16::from_be_bytes(self.header) as usize;
                        if len > N {
                            self.header_len = 0;
                            return Err(FrameError::TooLarge { len, limit: N });
                        }
                        self.want = Some(len);
                        self.have = 0;
                    }
                }
                Some(len) if self.have == len => {
                    self.want = None;
                    return Ok((used, Some(len)));
                }
                Some(len) => {
                    let n = (len - self.have).min(input.len() - used);
                    self.buf[self.have..self.have + n].copy_from_slice(&input[used..used + n]);
                    self.have += n;
                    used += n;
                }
            }
        }
        Ok((used, None))
    }

    /// The last completed frame.
    pub fn frame(&self) -> &[u8] {
        &self.buf[..self.have]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all<const N: usize>(d: &mut Decoder<N>, mut input: &[u8], out: &mut [[u8; 8]; 8]) -> usize {
        let mut n = 0;
        while !input.is_empty() {
            let (used, done) = d.push(input).unwrap();
            input = &input[used..];
            if let Some(len) = done {
                out[n][..len].copy_from_slice(d.frame());
                n += 1;
            }
        }
        n
    }

    #[test]
    fn roundtrip_in_one_piece_and_byte_by_byte() {
        let mut wire = [0u8; 64];
        let mut w = 0;
        for p in [&b"abc"[..], b"", b"12345678"] {
            w += encode(p, &mut wire[w..]).unwrap();
        }
        let mut out = [[0u8; 8]; 8];
        let mut d = Decoder::<8>::new();
        assert_eq!(decode_all(&mut d, &wire[..w], &mut out), 3);
        assert_eq!(&out[0][..3], b"abc");
        assert_eq!(&out[2], b"12345678");

        let mut d = Decoder::<8>::new();
        let mut frames = 0;
        for b in &wire[..w] {
            let (used, done) = d.push(core::slice::from_ref(b)).unwrap();
            assert_eq!(used, 1);
            frames += done.is_some() as usize;
        }
        // The empty frame completes when its header does; the others with their last byte.
        assert_eq!(frames, 3);
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut d = Decoder::<16>::new();
        assert_eq!(d.push(&[0x00, 0x11, 1, 2, 3]), Err(FrameError::TooLarge { len: 17, limit: 16 }));
        assert_eq!(d.push(&[0xFF, 0xFF]), Err(FrameError::TooLarge { len: 65_535, limit: 16 }));
    }

    #[test]
    fn encode_checks_sizes() {
        let mut small = [0u8; 4];
        assert_eq!(encode(b"abc", &mut small), Err(FrameError::BufferTooSmall));
        assert_eq!(encode(b"ab", &mut small), Ok(4));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // A cheap deterministic fuzz: every split of pseudo-random streams.
        let mut x = 0x1234_5678u32;
        for _ in 0..2_000 {
            let mut stream = [0u8; 40];
            for b in stream.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let mut d = Decoder::<32>::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                match d.push(&rest[..rest.len().min((x % 7 + 1) as usize)]) {
                    Ok((used, _)) => rest = &rest[used..],
                    Err(_) => break,
                }
            }
        }
    }
}
