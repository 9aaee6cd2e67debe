//! The error of the channel helpers ([`crate::http`], [`crate::config`], [`crate::mqtt`]).

use core::fmt;

use keel_abi::chan::Reason;
use keel_abi::Status;

/// Why a channel helper failed. Nothing the server sends can make a helper panic: whatever it
/// cannot use ends as one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A system call failed (the network is not connected, every channel slot is taken, a
    /// buffer is unsuitable, ...).
    Sys(Status),
    /// The request does not fit the scratch buffer it is encoded in, the channel's transmit
    /// buffer (`tx_len - 4` bytes), or a list limit of [`crate::msg`].
    TooLarge,
    /// The server's message is not a valid message.
    Malformed,
    /// The server sent a valid message of a type the helper does not expect here (its type
    /// byte, [`crate::msg::ty`]).
    Unexpected(u8),
    /// No answer within the timeout.
    Timeout,
    /// The channel was closed before the answer came (why: a [`Reason`]).
    Closed(Reason),
    /// The server could not serve the channel ([`crate::msg::Msg::Error`]; its code, an
    /// [`crate::msg::http_result`]-style value).
    Server(u8),
    /// The server answered with a failure result code (a [`crate::msg::config_result`] for
    /// [`crate::config::fetch`]).
    Failed(u8),
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        Error::Sys(s)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Sys(s) => write!(f, "system call failed: {}", s.name()),
            Error::TooLarge => f.write_str("request too large"),
            Error::Malformed => f.write_str("malformed message from the server"),
            Error::Unexpected(t) => write!(f, "unexpected message type 0x{t:02x}"),
            Error::Timeout => f.write_str("timeout"),
            Error::Closed(r) => write!(f, "channel closed: {}", r.as_str()),
            Error::Server(c) => write!(f, "server error {c}"),
            Error::Failed(c) => write!(f, "failed with result {c}"),
        }
    }
}
