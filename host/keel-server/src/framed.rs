//! The one frame codec (`keel_proto::frame::Decoder`) over an async byte stream.

use keel_proto::frame::{Decoder, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why [`FrameReader::next`] returned no frame.
#[derive(Debug)]
pub enum ReadError {
    /// The stream failed or ended (inside a frame or between frames).
    Io(std::io::Error),
    /// The peer announced a frame above the limit: the stream cannot be resynchronised.
    Frame(FrameError),
}

/// Reads length-prefixed frames of at most `N` bytes from `R`, feeding whatever arrives to a
/// [`Decoder`]; bytes after a frame stay buffered for the next call (so the reader is cancel-safe
/// between calls only if the caller does not drop it).
pub struct FrameReader<R, const N: usize> {
    inner: R,
    decoder: Box<Decoder<N>>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin, const N: usize> FrameReader<R, N> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            decoder: Box::new(Decoder::new()),
            buf: vec![0; 4096].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The next complete frame's payload.
    pub async fn next(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if self.start < self.end {
                let (used, done) = self.decoder.push(&self.buf[self.start..self.end]).map_err(ReadError::Frame)?;
                self.start += used;
                if done.is_some() {
                    return Ok(self.decoder.frame().to_vec());
                }
            }
            let n = self.inner.read(&mut self.buf).await.map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            (self.start, self.end) = (0, n);
        }
    }

    /// The underlying stream.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_split_and_joined_arbitrarily_come_out_whole() {
        let mut wire = Vec::new();
        for p in [&b"abc"[..], b"", &[7u8; 300]] {
            let mut f = vec![0u8; p.len() + 2];
            keel_proto::frame::encode(p, &mut f).unwrap();
            wire.extend_from_slice(&f);
        }
        let (mut a, b) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in wire.chunks(5) {
                a.write_all(chunk).await.unwrap();
            }
        });
        let mut r = FrameReader::<_, 512>::new(b);
        assert_eq!(r.next().await.unwrap(), b"abc");
        assert_eq!(r.next().await.unwrap(), b"");
        assert_eq!(r.next().await.unwrap(), vec![7u8; 300]);
        writer.await.unwrap();
        assert!(matches!(r.next().await, Err(ReadError::Io(_))), "end of stream");
    }

    #[tokio::test]
    async fn an_oversized_or_truncated_frame_is_an_error() {
        let mut r = FrameReader::<_, 16>::new(&b"\x00\x11"[..]);
        assert!(matches!(r.next().await, Err(ReadError::Frame(FrameError::TooLarge { len: 17, limit: 16 }))));
        let mut r = FrameReader::<_, 16>::new(&b"\x00\x05abc"[..]);
        assert!(matches!(r.next().await, Err(ReadError::Io(_))));
    }
}
