//! # Keel cloud link core
//!
//! Sans-IO building blocks of the device ↔ server link, shared by the visor, the server and the
//! simulator (see `docs/wire-protocol.md`):
//!
//! * [`frame`] and [`msg`]: the wire vocabulary, re-exported from `keel-proto` (no crypto).
//! * [`session`]: the Noise IK secure channel (device: clatter, no heap; server: snow, behind the
//!   `server` feature).
//! * [`device`]: the device end of a connection (handshake replies, log resume and
//!   acknowledgements), used by both the visor and the simulator.
//! * [`backoff`]: jittered exponential reconnect delays.
//!
//! `tests/noise_interop.rs` shows that the device's Noise implementation (clatter, `no_std`, no
//! heap) and the server's (snow) interoperate on `Noise_IK_25519_ChaChaPoly_SHA256`, including
//! rekeying and the rejection of tampered messages.
#![no_std]

pub mod backoff;
pub mod device;
pub mod session;

pub use keel_proto::{frame, msg};
