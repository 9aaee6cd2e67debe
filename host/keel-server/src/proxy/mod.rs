//! Outbound engines for device apps: the server performs HTTP requests ([`http`]) and holds
//! MQTT sessions ([`mqtt`]) on a device's behalf, for messages that arrive over the device's
//! encrypted link. Both are self-contained: the gateway's connection handling translates its
//! wire messages into their calls and their results back.
//!
//! **Where the server may connect** is decided by a [`Destinations`] policy (per account,
//! implemented elsewhere). It is applied to the address actually connected to: the engines
//! resolve the host name themselves, ask the policy about every candidate address and connect
//! only to an allowed one, so a name that resolves to an allowed address when checked and a
//! forbidden one when connected (DNS rebinding) cannot get through. TLS still verifies the
//! certificate against the host *name* (and sends it as SNI).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::rustls;

pub mod dns;
pub mod http;
pub mod mqtt;

pub use dns::{DnsLimits, DnsStats, NameLookups, Resolver, SystemResolver};

/// Who a request or a session is for: the per-account and per-device limits apply to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tenant {
    /// The device's account.
    pub account: String,
    /// The device.
    pub device: String,
}

/// The destination policy: where the server may connect on a device's behalf.
pub trait Destinations: Send + Sync + 'static {
    /// Ok if the server may connect to `ip:port` for `host` with `scheme` ("http", "https",
    /// "mqtt", "mqtts"); Err(reason) otherwise.
    ///
    /// `host` is the name the device asked for (or the address literal, without brackets);
    /// `ip` is one address it resolved to, IPv4-mapped IPv6 addresses given as IPv4.
    fn check(&self, scheme: &str, host: &str, port: u16, ip: IpAddr) -> Result<(), String>;
}

/// Resolves `host` (a name or an address literal, IPv6 without brackets) through `lookups`
/// (for `who`) and returns the addresses `dest` allows for `scheme`, in resolver order, each
/// at most once.
async fn resolve_allowed(
    lookups: &NameLookups,
    who: &Tenant,
    dest: &dyn Destinations,
    scheme: &str,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, ConnectError> {
    let candidates: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => lookups.lookup(who, host, port).await?,
    };
    let mut allowed: Vec<SocketAddr> = Vec::new();
    let mut first_refusal = None;
    for ip in candidates {
        let ip = ip.to_canonical();
        if allowed.iter().any(|a| a.ip() == ip) {
            continue;
        }
        match dest.check(scheme, host, port, ip) {
            Ok(()) => allowed.push(SocketAddr::new(ip, port)),
            Err(reason) => {
                first_refusal.get_or_insert(reason);
            }
        }
    }
    if !allowed.is_empty() {
        return Ok(allowed);
    }
    match first_refusal {
        Some(reason) => Err(ConnectError::Denied(reason)),
        None => Err(ConnectError::NxDomain(format!("{host}: no address"))),
    }
}

/// Why [`connect_allowed`] made no connection.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The name did not resolve (or resolved to nothing).
    NxDomain(String),
    /// Every address it resolved to was refused by the policy (the first refusal's reason).
    Denied(String),
    /// [`DnsLimits::per_device`], [`DnsLimits::per_account`] or [`DnsLimits::max_concurrent`]
    /// lookups are in progress: the name was not looked up.
    LookupsBusy,
    /// The lookup did not answer within [`DnsLimits::timeout`].
    LookupTimeout,
    /// No allowed address accepted the connection (the last error).
    Connect(std::io::Error),
}

/// Resolves `host`, asks `dest` about each address and connects to the first allowed one that
/// accepts within `per_address` ([`resolve_allowed`], then [`connect_first`]).
pub(crate) async fn connect_allowed(
    lookups: &NameLookups,
    who: &Tenant,
    dest: &dyn Destinations,
    scheme: &str,
    host: &str,
    port: u16,
    per_address: Duration,
) -> Result<TcpStream, ConnectError> {
    let addrs = resolve_allowed(lookups, who, dest, scheme, host, port).await?;
    connect_first(&addrs, per_address).await.map_err(ConnectError::Connect)
}

/// Connects to the first of `addrs` that accepts within `per_address` each; the last error if
/// none does.
async fn connect_first(addrs: &[SocketAddr], per_address: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address");
    for addr in addrs {
        match tokio::time::timeout(per_address, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr} timed out"))
            }
        }
    }
    Err(last)
}

/// Aborts a spawned task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The rustls crypto provider of the engines (ring; no C toolchain beyond ring's own).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate of PEM bundles into `roots`; an error names what failed.
pub(crate) fn add_pem_roots(roots: &mut rustls::RootCertStore, pems: &[Vec<u8>]) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    for (i, pem) in pems.iter().enumerate() {
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("CA PEM #{i}: {e}"))?;
            roots.add(cert).map_err(|e| format!("CA PEM #{i}: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("CA PEM #{i}: no certificate"));
        }
    }
    Ok(())
}

/// The first [`rustls::Error`] in an error's chain (I/O errors are looked into: tokio-rustls
/// reports handshake failures as `io::Error`s wrapping the rustls error).
pub(crate) fn find_rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = find_rustls_error(inner) {
                    return Some(r);
                }
            }
        }
        cur = err.source();
    }
    None
}
