//! # Keel remote debugging core
//!
//! `keel debug` runs the GDB remote-protocol server on the developer's machine; the device runs
//! only a small agent. Between them, through the Keel server's relay, goes an end-to-end
//! encrypted session the server cannot read or alter. This crate is both ends of it, sans-IO and
//! `no_std`, shared by the visor, the CLI and the tests:
//!
//! * [`session`]: the Noise IK session (the developer's debug key and the device's key), with
//!   explicit nonces so a lost frame costs a retransmission and a replayed one ends the session;
//! * [`wire`]: the requests (batches of halt, resume, registers, memory, breakpoints) and the
//!   device's replies and stop events;
//! * [`agent`]: the device's half: runs requests against the app through a [`agent::Target`]
//!   the visor implements (TT-checked memory, the halted app's registers), plants and removes
//!   software breakpoints, and tells the visor when to halt, resume or restart the app.
//!
//! Single stepping is the CLI's job (it decodes the next instruction with `keel-thumb` and
//! asks for a temporary breakpoint), so the device never decodes instructions nor parses RSP.
#![no_std]
#![forbid(unsafe_code)]

pub mod agent;
pub mod session;
pub mod wire;
