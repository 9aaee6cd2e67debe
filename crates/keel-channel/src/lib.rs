//! # Keel app channels
//!
//! How an app reaches the cloud through the visor, sans-IO and `no_std`:
//!
//! * [`msg`]: the app messages a channel carries — an HTTP request and its response, MQTT
//!   operations and their results, a configuration fetch and its values — in a small
//!   little-endian binary format that C code writes and reads without a library
//!   (`sdk/c/include/keel_chan.h` mirrors it). The visor never reads these; the server validates
//!   them.
//! * [`device`]: the channel table the visor keeps for the app: handles, the app's receive and
//!   transmit buffers (reached through [`device::AppMemory`], checked on every access), credit
//!   on both directions, pieces of messages to and from the link, and the notification records
//!   the app gets. Used by `keel-device` (so by the visor and keel-sim).
//! * [`peer`] (feature `alloc`): the server's end of one channel: reassembly of the device's
//!   messages, credit bookkeeping, and cutting answers into pieces.
//!
//! The ABI side (handles, buffers, statuses) is `keel_abi::chan`; the wire side (`ChanOpen`,
//! `ChanData`, ...) is `keel_proto::msg`. `docs/channels.md` describes the whole.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "device")]
pub mod device;
pub mod msg;
#[cfg(feature = "alloc")]
pub mod peer;
