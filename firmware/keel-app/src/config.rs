//! Configuration values and secrets from the Keel server (since ABI 2.1).
//!
//! One [`fetch`] asks for up to [`crate::msg::MAX_CONFIG_KEYS`] keys at once on a config channel
//! ([`crate::chan::Kind::Config`]) and hands each value to a closure, in request order, straight
//! from the channel's receive buffer. A key is (scope, store, name): [`SCOPE_ACCOUNT`] or
//! [`SCOPE_DEVICE`], [`STORE_CONFIG`] or [`STORE_SECRET`], and 1..=128 bytes of
//! `[A-Za-z0-9._/-]`. Each scope is looked up as asked: a device key does not fall back to the
//! account's.
//!
//! Sizes: the request (8 bytes, then 4 bytes plus the name per key) is encoded in a scratch
//! buffer — [`fetch`] uses [`crate::chan::STACK_SCRATCH`] bytes of stack, [`fetch_in`] a buffer
//! of the caller's — and must fit the transmit buffer (`tx_len - 4` bytes). The answer (9 bytes,
//! then 5 bytes plus the value per key) must fit the receive buffer (`rx_len - 4` bytes), or the
//! server answers [`crate::msg::config_result::RESPONSE_TOO_LARGE`].

pub use keel_channel::msg::config::{SCOPE_ACCOUNT, SCOPE_DEVICE, STORE_CONFIG, STORE_SECRET};
use keel_channel::msg::{config_result, ConfigAnswer, Keys, Msg, MAX_CONFIG_KEYS};

use crate::chan::{self, Channel, Kind};
use crate::Error;

/// Tag of the SDK's config channels (in their notification records).
pub const TAG: u32 = 0x4346_4731;
/// How long [`fetch`] waits for the server's answer (ms).
pub const TIMEOUT_MS: u32 = 15_000;

/// One key to fetch: scope, store, name.
pub type Key<'a> = (u8, u8, &'a str);

/// The name of a [`crate::msg::config_result`] code, for logs.
pub fn result_name(result: u8) -> &'static str {
    match result {
        config_result::OK => "OK",
        config_result::RESPONSE_TOO_LARGE => "RESPONSE_TOO_LARGE",
        config_result::BAD_REQUEST => "BAD_REQUEST",
        config_result::TOO_MANY_KEYS => "TOO_MANY_KEYS",
        config_result::NOT_FOUND => "NOT_FOUND",
        config_result::INVALID_KEY => "INVALID_KEY",
        config_result::SERVER_ERROR => "SERVER_ERROR",
        _ => "UNKNOWN",
    }
}

/// Fetches `keys` and calls `each(index, result, value)` once per key, in order: `result` is a
/// [`crate::msg::config_result`] code (`OK`, `NOT_FOUND`, `INVALID_KEY`, `SERVER_ERROR`) and
/// `value` the value (empty unless found). Waits at most [`TIMEOUT_MS`]. The request is encoded
/// on the stack ([`crate::chan::STACK_SCRATCH`] bytes; [`Error::TooLarge`] beyond, use
/// [`fetch_in`]).
///
/// Errors: more than [`crate::msg::MAX_CONFIG_KEYS`] keys or too large ([`Error::TooLarge`]),
/// the whole fetch failed ([`Error::Failed`] with the message's result), the server answered
/// with something else or with a different number of items than keys ([`Error::Malformed`]),
/// no answer in time, the channel could not be opened or was closed first. `each` is called only
/// when the whole answer was valid.
pub fn fetch(
    keys: &[Key<'_>],
    rx: &mut [u32],
    tx: &mut [u32],
    each: impl FnMut(usize, u8, &[u8]),
) -> Result<(), Error> {
    let mut scratch = [0u8; chan::STACK_SCRATCH];
    fetch_in(keys, &mut scratch, rx, tx, each)
}

/// [`fetch`] with the caller's scratch buffer for the encoded request.
pub fn fetch_in(
    keys: &[Key<'_>],
    scratch: &mut [u8],
    rx: &mut [u32],
    tx: &mut [u32],
    mut each: impl FnMut(usize, u8, &[u8]),
) -> Result<(), Error> {
    if keys.len() > MAX_CONFIG_KEYS {
        return Err(Error::TooLarge);
    }
    let mut ks: [(u8, u8, &[u8]); MAX_CONFIG_KEYS] = [(0, 0, &[]); MAX_CONFIG_KEYS];
    for (d, &(scope, store, name)) in ks.iter_mut().zip(keys) {
        *d = (scope, store, name.as_bytes());
    }
    let n = Msg::ConfigFetch { keys: Keys::Items(&ks[..keys.len()]) }.encode(scratch).map_err(|_| Error::TooLarge)?;
    let mut ch = Channel::open(Kind::Config, "", rx, tx, TAG)?;
    ch.send(&scratch[..n]).map_err(|e| chan::send_error(&ch, e))?;
    let r = ch.recv_wait_with(TIMEOUT_MS, |m| match ConfigAnswer::decode(m, keys.len()) {
        ConfigAnswer::Items(items) => {
            for (i, (res, value)) in items.iter().enumerate() {
                each(i, res, value);
            }
            Ok(())
        }
        ConfigAnswer::Failed(result) => Err(Error::Failed(result)),
        ConfigAnswer::ServerError(code) => Err(Error::Server(code)),
        ConfigAnswer::Unexpected(t) => Err(Error::Unexpected(t)),
        ConfigAnswer::Malformed => Err(Error::Malformed),
    });
    match r {
        Ok(r) => r,
        Err(keel_abi::Status::NoData) => Err(Error::Timeout),
        Err(e) => Err(chan::recv_error(&ch, e)),
    }
}
