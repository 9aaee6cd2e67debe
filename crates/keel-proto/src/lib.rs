//! # Keel wire vocabulary
//!
//! Everything the device and the server say to each other, without the cryptography (which is
//! `keel-link`'s Noise session). Shared by the visor, the simulator, the gateway and the tests;
//! `docs/wire-protocol.md` is its specification.
//!
//! * [`frame`]: a 2-byte big-endian length, then that many bytes; the decoder enforces a
//!   per-endpoint limit so a peer cannot make the other side buffer more than it chose to.
//! * [`msg`]: the CBOR messages in each direction, negotiation and the skip rule.
//! * [`event`]: structured visor events (boot, crash, link loss, update outcome).
#![no_std]
#![forbid(unsafe_code)]

pub mod event;
pub mod frame;
pub mod msg;
