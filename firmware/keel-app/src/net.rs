//! Network control (since ABI 2.1): ask the visor for the link to the Keel server and watch it.
//!
//! The app never drives the network itself. It holds **requests** ([`request`], [`release`]);
//! while it holds one the visor reports every change of the link as a
//! [`crate::notify::Kind::NetStatus`] record (queued like any record, see [`crate::notify`]).
//! The visor keeps the link up for its own needs (updates, logs) whatever the app does, so the
//! link may well be up without a request; channels ([`crate::chan`]) open only while it is.

use keel_abi::chan::NetStatus as RawStatus;
pub use keel_abi::chan::{wanted, NetState, NetStatus, OfflineReason};
use keel_abi::{Call, Status};

use crate::notify;

fn call(c: Call, a0: u32) -> Result<(), Status> {
    // SAFETY: callers pass either no pointer or a pointer to their own live local of the right
    // size.
    crate::status(unsafe { crate::raw::call(c as u32, a0, 0, 0, 0) })
}

/// Asks for the network (counted: every request needs a [`release`]); link changes are then
/// reported as [`crate::notify::Kind::NetStatus`] records carrying `tag`, the current state at
/// once. Sets up the notification ring first.
pub fn request(tag: u32) -> Result<(), Status> {
    notify::init()?;
    call(Call::NetRequest, tag)
}

/// Drops one request; [`Status::Unavailable`] if the app holds none.
pub fn release() -> Result<(), Status> {
    call(Call::NetRelease, 0)
}

/// The link's state, who wants it and why it is down.
pub fn status() -> Result<NetStatus, Status> {
    let mut s = RawStatus { version: 1, ..Default::default() };
    call(Call::NetStatus, &mut s as *mut RawStatus as u32)?;
    Ok(s)
}

/// True if the link to the server is up (channels can open).
pub fn is_connected() -> bool {
    status().is_ok_and(|s| s.state == NetState::Connected as u32)
}

/// The name of a [`NetStatus::state`] value, for logs.
pub fn state_name(state: u32) -> &'static str {
    match state {
        0 => "offline",
        1 => "connecting",
        2 => "connected",
        _ => "unknown",
    }
}

/// The name of a [`NetStatus::offline`] value, for logs.
pub fn offline_name(reason: u32) -> &'static str {
    match reason {
        0 => "none",
        1 => "no address",
        2 => "backoff",
        3 => "not provisioned",
        _ => "unknown",
    }
}

/// What a look at the link says for [`wait_connected`].
fn check() -> Result<bool, Status> {
    let s = status()?;
    if s.state == NetState::Connected as u32 {
        return Ok(true);
    }
    if s.state == NetState::Offline as u32 && s.offline == OfflineReason::NotProvisioned as u32 {
        // Never connects.
        return Err(Status::Unavailable);
    }
    Ok(false)
}

/// Blocks until the link is up, at most `timeout_ms` (sleeping with `wfi` between
/// notifications). Hold a [`request`] meanwhile so the visor reports changes at once (without
/// one this still works, but it only looks again when some record or the timeout arrives).
///
/// Errors: [`Status::NetworkNotConnected`] at the timeout, [`Status::Unavailable`] if the device
/// is not provisioned (it never connects), or the error of [`status`].
pub fn wait_connected(timeout_ms: u32) -> Result<(), Status> {
    notify::init()?;
    let deadline = crate::monotonic_us().saturating_add(timeout_ms as u64 * 1000);
    loop {
        let seen = notify::events();
        if check()? {
            return Ok(());
        }
        if crate::monotonic_us() >= deadline {
            return Err(Status::NetworkNotConnected);
        }
        notify::block(seen, Some(deadline));
    }
}

/// Completes when the link is up (async; no timeout: race it with [`crate::notify::at`] for
/// one). Errors as [`wait_connected`].
pub async fn connected() -> Result<(), Status> {
    notify::init()?;
    loop {
        let seen = notify::events();
        if check()? {
            return Ok(());
        }
        notify::changed(seen).await;
    }
}
