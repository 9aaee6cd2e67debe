//! HTTP(S) requests through the Keel server (since ABI 2.1).
//!
//! The server makes the request on the device's behalf (the account's policy decides which
//! destinations are allowed) and sends the whole response back on an HTTP channel
//! ([`crate::chan::Kind::Http`]): one request per channel. The response lives in the channel's
//! receive buffer; [`Response`] reads it in place and keeps the channel until it is dropped.
//!
//! Sizes: the request (method, URL, headers, body and about 20 bytes of framing, see
//! [`crate::msg::Msg::HttpRequest`]) is encoded in a scratch buffer — [`request`] uses
//! [`crate::chan::STACK_SCRATCH`] bytes of stack, [`request_in`] a buffer of the caller's — and
//! must fit the transmit buffer (`tx_len - 4` bytes). The response (status, headers, body and
//! framing) must fit the receive buffer (`rx_len - 4` bytes); a larger one is answered with
//! [`crate::msg::http_result::RESPONSE_TOO_LARGE`] instead. At most
//! [`crate::msg::MAX_HTTP_HEADERS`] headers either way.

use keel_channel::msg::{split_header, Msg, Strs};

use crate::chan::{self, Channel, Kind};
use crate::Error;

/// Tag of the SDK's HTTP channels (in their notification records).
pub const TAG: u32 = 0x4854_5450;
/// Time the SDK waits beyond the request's own timeout for the server's answer (ms).
pub const ANSWER_MARGIN_MS: u32 = 5_000;
/// Shortest and longest timeout the server accepts (ms); the SDK clamps into this range.
pub const TIMEOUT_RANGE_MS: (u32, u32) = (1_000, 60_000);

/// A request, for [`request_in`].
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `GET`, `HEAD`, `POST`, `PUT`, `DELETE`, `PATCH` or `OPTIONS`.
    pub method: &'a str,
    /// `https://host[:port]/path?query`.
    pub url: &'a str,
    /// `Name: value` each.
    pub headers: &'a [&'a str],
    /// The body (empty for none).
    pub body: &'a [u8],
    /// How long the server waits for the remote answer (ms, clamped to [`TIMEOUT_RANGE_MS`]);
    /// the SDK waits [`ANSWER_MARGIN_MS`] longer for the server.
    pub timeout_ms: u32,
}

/// A response, read in place in the channel's receive buffer. Dropping it closes the channel.
pub struct Response<'b> {
    chan: Channel<'b>,
    result: u8,
    status: u16,
    /// Header count and the range of their encoded bytes in the receive buffer.
    headers: (u16, usize, usize),
    /// Range of the body in the receive buffer.
    body: (usize, usize),
    /// Range of the whole message in the receive buffer.
    msg: (usize, usize),
}

impl<'b> Response<'b> {
    /// The [`crate::msg::http_result`] code: `OK` (0) if the request was made (then
    /// [`Response::status`] is the remote server's), otherwise why not (the body says more).
    pub fn result(&self) -> u8 {
        self.result
    }

    /// True if the request was made and the remote status is 2xx.
    pub fn is_success(&self) -> bool {
        self.result == keel_channel::msg::http_result::OK && (200..300).contains(&self.status)
    }

    /// The remote server's status (0 unless [`Response::result`] is `OK`).
    pub fn status(&self) -> u16 {
        self.status
    }

    fn bytes(&self) -> &[u8] {
        let (off, len) = self.msg;
        // SAFETY: the range of the message `peek_wait` reported in `request_in`; it is never
        // consumed (the response only reads, and closing the channel ends the borrow).
        unsafe { self.chan.rx_slice(off, len) }
    }
    /// The response's headers as `Name: value` lines.
    pub fn header_lines(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let (count, off, len) = self.headers;
        let raw = self.bytes().get(off..off + len).unwrap_or(&[]);
        Strs::Raw { count, raw }.iter()
    }

    /// The response's headers as (name, value) pairs (lines without a colon are skipped).
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.header_lines().filter_map(split_header)
    }

    /// The value of the first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }

    /// The body (or, when [`Response::result`] is not `OK`, the server's short reason).
    pub fn body(&self) -> &[u8] {
        let (off, len) = self.body;
        self.bytes().get(off..off + len).unwrap_or(&[])
    }

    /// The body as text, if it is UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        core::str::from_utf8(self.body()).ok()
    }

    /// Closes the channel now (dropping the response does the same).
    pub fn close(self) {}
}

/// The range of `part` (a sub-slice of `whole`) inside `whole`.
fn range_in(whole: &[u8], part: &[u8]) -> (usize, usize) {
    let off = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    if off <= whole.len() && part.len() <= whole.len() - off {
        (off, part.len())
    } else {
        (0, 0)
    }
}

/// The name of a [`crate::msg::http_result`] code, for logs.
pub fn result_name(result: u8) -> &'static str {
    use keel_channel::msg::http_result as r;
    match result {
        r::OK => "OK",
        r::UNSUPPORTED_SCHEME => "UNSUPPORTED_SCHEME",
        r::UNSUPPORTED_METHOD => "UNSUPPORTED_METHOD",
        r::INVALID_HEADERS => "INVALID_HEADERS",
        r::INVALID_TIMEOUT => "INVALID_TIMEOUT",
        r::REQUEST_FAILED => "REQUEST_FAILED",
        r::RESPONSE_TOO_LARGE => "RESPONSE_TOO_LARGE",
        r::DENIED => "DENIED",
        r::TIMEOUT => "TIMEOUT",
        r::RATE_LIMITED => "RATE_LIMITED",
        r::BAD_REQUEST => "BAD_REQUEST",
        r::ALREADY_SENT => "ALREADY_SENT",
        _ => "UNKNOWN",
    }
}

/// Makes an HTTP(S) request and waits for the response, at most `timeout_ms` (clamped to
/// [`TIMEOUT_RANGE_MS`]) plus [`ANSWER_MARGIN_MS`]. The request is encoded on the stack
/// ([`crate::chan::STACK_SCRATCH`] bytes; [`Error::TooLarge`] beyond, use [`request_in`]).
///
/// `Ok` for every response of the server, whether the request was made or not (see
/// [`Response::result`]); `Err` when there is no response: the channel could not be opened or
/// was closed first, the server's message is not a response, or the timeout.
pub fn request<'b>(
    method: &str,
    url: &str,
    headers: &[&str],
    body: &[u8],
    timeout_ms: u32,
    rx: &'b mut [u32],
    tx: &'b mut [u32],
) -> Result<Response<'b>, Error> {
    let mut scratch = [0u8; chan::STACK_SCRATCH];
    request_in(&Request { method, url, headers, body, timeout_ms }, &mut scratch, rx, tx)
}

/// `GET url` (see [`request`]).
pub fn get<'b>(url: &str, timeout_ms: u32, rx: &'b mut [u32], tx: &'b mut [u32]) -> Result<Response<'b>, Error> {
    request("GET", url, &[], &[], timeout_ms, rx, tx)
}

/// Longest header list [`request_in`] encodes.
const HEADERS: usize = keel_channel::msg::MAX_HTTP_HEADERS;

fn encode(req: &Request<'_>, scratch: &mut [u8]) -> Result<usize, Error> {
    if req.headers.len() > HEADERS {
        return Err(Error::TooLarge);
    }
    let mut hs: [&[u8]; HEADERS] = [&[]; HEADERS];
    for (d, s) in hs.iter_mut().zip(req.headers) {
        *d = s.as_bytes();
    }
    let m = Msg::HttpRequest {
        method: req.method.as_bytes(),
        url: req.url.as_bytes(),
        timeout_ms: clamp_timeout(req.timeout_ms),
        headers: Strs::Items(&hs[..req.headers.len()]),
        body: req.body,
    };
    m.encode(scratch).map_err(|_| Error::TooLarge)
}

fn clamp_timeout(ms: u32) -> u32 {
    ms.clamp(TIMEOUT_RANGE_MS.0, TIMEOUT_RANGE_MS.1)
}

/// [`request`] with the caller's scratch buffer for the encoded request (it needs the request's
/// size, about 20 bytes plus the method, URL, headers (2 bytes each more) and body).
pub fn request_in<'b>(
    req: &Request<'_>,
    scratch: &mut [u8],
    rx: &'b mut [u32],
    tx: &'b mut [u32],
) -> Result<Response<'b>, Error> {
    let n = encode(req, scratch)?;
    let mut ch = Channel::open(Kind::Http, "", rx, tx, TAG)?;
    // The transmit buffer is empty: the message fits at once or never.
    ch.send(&scratch[..n]).map_err(|e| chan::send_error(&ch, e))?;
    let wait_ms = clamp_timeout(req.timeout_ms).saturating_add(ANSWER_MARGIN_MS);
    let msg = match ch.peek_wait(wait_ms) {
        Ok(r) => r,
        Err(keel_abi::Status::NoData) => return Err(Error::Timeout),
        Err(e) => return Err(chan::recv_error(&ch, e)),
    };
    // SAFETY: the range `peek_wait` reported; not consumed while the slice lives (here).
    let m = unsafe { ch.rx_slice(msg.0, msg.1) };
    let (result, status, headers, body) = decode(m)?;
    Ok(Response { chan: ch, result, status, headers, body, msg })
}

/// What [`decode`] found: result, status, headers (count, offset, length), body (offset,
/// length), all relative to the message.
type Parsed = (u8, u16, (u16, usize, usize), (usize, usize));

fn decode(m: &[u8]) -> Result<Parsed, Error> {
    match Msg::decode(m) {
        Ok(Msg::HttpResponse { result, status, headers, body }) => {
            let hdr = match headers {
                Strs::Raw { count, raw } => {
                    let (o, l) = range_in(m, raw);
                    (count, o, l)
                }
                Strs::Items(_) => (0, 0, 0),
            };
            Ok((result, status, hdr, range_in(m, body)))
        }
        Ok(Msg::Error { code, .. }) => Err(Error::Server(code)),
        Ok(_) => Err(Error::Unexpected(m.first().copied().unwrap_or(0))),
        Err(keel_channel::msg::Error::UnknownType(t)) => Err(Error::Unexpected(t)),
        Err(_) => Err(Error::Malformed),
    }
}
