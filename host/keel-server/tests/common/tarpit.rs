//! A resolver standing in for a name server that never answers (shared by the proxy tests).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use keel_server::proxy::Resolver;

/// A resolver standing in for a tarpit name server: a name under `.tarpit` blocks its lookup
/// thread until [`Tarpit::release`] (and then does not resolve); any other name is 127.0.0.1.
/// Each tarpit lookup that starts is reported on `entered`.
pub struct Tarpit {
    released: Mutex<bool>,
    cv: std::sync::Condvar,
    entered: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Tarpit {
    pub fn new() -> (Arc<Tarpit>, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (entered, rx) = tokio::sync::mpsc::unbounded_channel();
        (Arc::new(Tarpit { released: Mutex::new(false), cv: std::sync::Condvar::new(), entered }), rx)
    }

    pub fn release(&self) {
        *self.released.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }
}

impl Resolver for Tarpit {
    fn lookup(&self, host: &str, _port: u16) -> std::io::Result<Vec<IpAddr>> {
        if !host.ends_with(".tarpit") {
            return Ok(vec!["127.0.0.1".parse().unwrap()]);
        }
        let _ = self.entered.send(host.to_string());
        let mut released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        while !*released {
            released = self.cv.wait(released).unwrap_or_else(|e| e.into_inner());
        }
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, "tarpit"))
    }
}

/// Releases the tarpit when the test ends, passed or failed (the runtime waits for blocking
/// threads when it shuts down).
pub struct ReleaseOnDrop(pub Arc<Tarpit>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}
