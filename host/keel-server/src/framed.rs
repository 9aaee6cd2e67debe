//! The one frame codec (`keel_proto::frame::Decoder`) over an async byte stream.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use keel_proto::frame::{Decoder, FrameError};
use tokio::io::{AsyncRead, ReadBuf};

/// Why [`FrameReader::next`] returned no frame.
#[derive(Debug)]
pub enum ReadError {
    /// The stream failed or ended (inside a frame or between frames).
    Io(std::io::Error),
    /// The peer announced a frame above the limit: the stream cannot be resynchronised.
    Frame(FrameError),
}

/// Bytes read from the stream at a time, into a buffer on the stack of the poll (never kept).
const READ_CHUNK: usize = 4096;

/// Reads length-prefixed frames of at most `N` bytes from `R`, feeding whatever arrives to a
/// [`Decoder`]. Bytes after a frame stay buffered for the next call.
///
/// [`FrameReader::next`] is cancel-safe: everything it read is kept in the reader, so it can
/// wait in a `select!` beside timers and be dropped there without losing a half-read frame.
///
/// An idle reader holds no buffer: the decoder is allocated while a frame is partly received,
/// the bytes left after a frame only while there are any, and reads go to a buffer on the
/// stack (so a gateway holding many idle connections pays nothing per connection here).
pub struct FrameReader<R, const N: usize> {
    inner: R,
    /// Present while a frame is partly received.
    decoder: Option<Box<Decoder<N>>>,
    /// Bytes received after the last complete frame, from `pos` on (empty when none).
    rest: Vec<u8>,
    pos: usize,
}

impl<R: AsyncRead + Unpin, const N: usize> FrameReader<R, N> {
    /// A reader over `inner`.
    pub fn new(inner: R) -> Self {
        FrameReader { inner, decoder: None, rest: Vec::new(), pos: 0 }
    }

    /// The next complete frame's payload (cancel-safe).
    pub async fn next(&mut self) -> Result<Vec<u8>, ReadError> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// A frame that can be had without waiting (already buffered or already received by the
    /// socket), or `None`.
    pub async fn try_next(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        poll_fn(|cx| match self.poll_next(cx) {
            Poll::Pending => Poll::Ready(Ok(None)),
            Poll::Ready(r) => Poll::Ready(r.map(Some)),
        })
        .await
    }

    /// Feeds `input` to the decoder: bytes consumed and the frame, if one completed (the
    /// decoder is then freed).
    fn push(&mut self, input: &[u8]) -> Result<(usize, Option<Vec<u8>>), ReadError> {
        let decoder = self.decoder.get_or_insert_with(|| Box::new(Decoder::new()));
        let (used, done) = decoder.push(input).map_err(ReadError::Frame)?;
        if done.is_none() {
            return Ok((used, None));
        }
        let frame = decoder.frame().to_vec();
        self.decoder = None;
        Ok((used, Some(frame)))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<u8>, ReadError>> {
        loop {
            if self.pos < self.rest.len() {
                let rest = std::mem::take(&mut self.rest);
                let r = self.push(&rest[self.pos..]);
                self.rest = rest;
                let (used, frame) = r?;
                self.pos += used;
                if self.pos == self.rest.len() {
                    (self.rest, self.pos) = (Vec::new(), 0);
                }
                if let Some(f) = frame {
                    return Poll::Ready(Ok(f));
                }
            }
            let mut buf = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadError::Io(e))),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into())));
            }
            let (used, frame) = self.push(&buf[..n])?;
            if used < n {
                (self.rest, self.pos) = (buf[used..n].to_vec(), 0);
            }
            if let Some(f) = frame {
                return Poll::Ready(Ok(f));
            }
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
