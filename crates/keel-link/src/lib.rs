//! # Keel cloud link core
//!
//! Sans-IO building blocks of the device ↔ server link, shared by the visor, the server and the
//! simulator. Today: the frame codec ([`frame`]). Every frame on the TCP connection is a 2-byte
//! big-endian length followed by that many bytes (a Noise handshake or transport message, at
//! most 65 535 bytes as the Noise specification requires). The decoder enforces a smaller,
//! per-endpoint limit so a peer cannot make the other side buffer more than it chose to.
//!
//! `tests/noise_interop.rs` shows that the device's Noise implementation (clatter, `no_std`, no
//! heap) and the server's (snow) interoperate on `Noise_IK_25519_ChaChaPoly_SHA256`, including
//! rekeying and the rejection of tampered messages.
#![no_std]

pub mod backoff;
pub mod device;
pub mod frame;
pub mod msg;
pub mod session;
