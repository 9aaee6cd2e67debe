//! The remote debugging websocket ([`Client::debug_socket`]): a blocking websocket (tungstenite)
//! over TCP or TLS (rustls, trusting what the [`Client`] trusts), one opaque frame per binary
//! message.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Error as WsError, HandshakeError, Message, WebSocket};

use super::{segment, ApiError, Client};

/// Largest opaque debug frame, in either direction (`keel_proto::msg::MAX_DEBUG_FRAME`): the
/// server closes the socket on a longer one, so [`DebugSocket::send`] refuses it.
pub const MAX_DEBUG_FRAME: usize = 960;

/// Largest message the client reads at all (the server sends frames of at most
/// [`MAX_DEBUG_FRAME`]); something sending more is not the server.
const MAX_MESSAGE: usize = 64 << 10;

/// How long connecting and the handshakes may take when the client has no timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// TCP, or TLS over TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A debugger's websocket to one device through the server's relay
/// (`GET /v1/devices/{id}/debug`, scope `deploy`): each [`DebugSocket::send`] is one opaque
/// frame to the device, each [`DebugSocket::recv`] one frame from it. The server forwards frames
/// without reading them and may drop some (device offline, over the rate): the end-to-end
/// protocol on top retransmits.
///
/// Call [`DebugSocket::recv`] regularly (at least every minute): it answers the server's
/// keep-alive pings, and a debugger silent for two minutes is closed. The server closes the
/// socket with a reason when another debugger attaches to the same device (`replaced`), when it
/// stops, or when this side breaks the rules (a frame over [`MAX_DEBUG_FRAME`]); the next
/// [`DebugSocket::send`] or [`DebugSocket::recv`] is then an [`ApiError::Transport`] whose
/// message has the reason, also given by [`DebugSocket::close_reason`].
pub struct DebugSocket {
    ws: WebSocket<Stream>,
    server: String,
    /// The server's close frame (code, reason), once it arrived.
    closed: Option<(u16, String)>,
}

impl std::fmt::Debug for DebugSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugSocket").field("server", &self.server).field("closed", &self.closed).finish()
    }
}

impl Client {
    /// Attaches a debugger to `device_id`: opens the relay's websocket
    /// (`GET /v1/devices/{id}/debug`, `ws://` or `wss://` after the client's base URL, with the
    /// client's token and TLS trust). A refusal comes back as the API's error answer (401, 403
    /// for a token without scope `deploy`, 404 for a device not in the token's account).
    /// Attaching replaces the debugger attached to the device before (a resumed session).
    pub fn debug_socket(&self, device_id: &str) -> Result<DebugSocket, ApiError> {
        let (tls, rest) = if let Some(r) = self.base.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = self.base.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(ApiError::Local { message: format!("not an http:// or https:// URL: {}", self.base) });
        };
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = split_authority(authority, if tls { 443 } else { 80 })
            .ok_or_else(|| ApiError::Local { message: format!("bad server address in {}", self.base) })?;
        let transport = |message: String| ApiError::Transport { server: self.base.clone(), tls: false, message };
        let url = format!("{}://{rest}/v1/devices/{}/debug", if tls { "wss" } else { "ws" }, segment(device_id));
        let mut req = url.as_str().into_client_request().map_err(|e| ApiError::Local { message: e.to_string() })?;
        if let Some(t) = &self.token {
            let v = format!("Bearer {t}").parse().map_err(|_| ApiError::Local { message: "bad token".into() })?;
            req.headers_mut().insert("authorization", v);
        }

        // Connect (bounded by the client's timeout), then TLS and the websocket handshake.
        let limit = self.timeout.unwrap_or(CONNECT_TIMEOUT);
        let addrs: Vec<_> = (host.as_str(), port).to_socket_addrs().map_err(|e| transport(e.to_string()))?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, limit) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = tcp.ok_or_else(|| transport(last.to_string()))?;
        let _ = tcp.set_nodelay(true);
        tcp.set_read_timeout(Some(limit))
            .and_then(|()| tcp.set_write_timeout(Some(limit)))
            .map_err(|e| transport(e.to_string()))?;
        let stream = if tls {
            let config = self.rustls_config()?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| ApiError::Local { message: format!("bad server name {host}: {e}") })?;
            let conn = rustls::ClientConnection::new(config, name).map_err(|e| ApiError::Transport {
                server: self.base.clone(),
                tls: true,
                message: e.to_string(),
            })?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            // The TLS handshake now, so its failure is told apart from the websocket's.
            while s.conn.is_handshaking() {
                if let Err(e) = s.conn.complete_io(&mut s.sock) {
                    let tls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
                        || e.to_string().contains("certificate");
                    return Err(ApiError::Transport { server: self.base.clone(), tls, message: e.to_string() });
                }
            }
            Stream::Tls(Box::new(s))
        } else {
            Stream::Plain(tcp)
        };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_MESSAGE);
        config.max_frame_size = Some(MAX_MESSAGE);
        match tungstenite::client::client_with_config(req, stream, Some(config)) {
            Ok((ws, _)) => {
                // Writes keep the client's bound; reads get each `recv`'s timeout.
                let _ = ws.get_ref().tcp().set_read_timeout(None);
                Ok(DebugSocket { ws, server: self.base.clone(), closed: None })
            }
            Err(HandshakeError::Failure(WsError::Http(resp))) => {
                let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                Err(ApiError::from_answer(resp.status().as_u16(), &body))
            }
            Err(HandshakeError::Failure(e)) => Err(transport(format!("websocket handshake: {e}"))),
            Err(HandshakeError::Interrupted(_)) => Err(transport("websocket handshake timed out".into())),
        }
    }

    /// The TLS configuration: the client's CA if it has one ([`Client::with_ca`]), else the
    /// public web roots; ring as the crypto provider.
    fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>, ApiError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(certs) => {
                for der in certs.iter() {
                    roots
                        .add(rustls::pki_types::CertificateDer::from(der.clone()))
                        .map_err(|e| ApiError::Local { message: format!("bad CA certificate: {e}") })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ApiError::Local { message: e.to_string() })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// `host[:port]` or `[v6]:port` -> (host without brackets, port).
fn split_authority(a: &str, default_port: u16) -> Option<(String, u16)> {
    let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match a.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((a.to_string(), default_port)),
    }
}

impl DebugSocket {
    /// Sends one frame to the device (at most [`MAX_DEBUG_FRAME`] bytes; a longer one is
    /// [`ApiError::Local`] and nothing is sent).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), ApiError> {
        if frame.len() > MAX_DEBUG_FRAME {
            return Err(ApiError::Local {
                message: format!("a debug frame is at most {MAX_DEBUG_FRAME} bytes, not {}", frame.len()),
            });
        }
        if self.closed.is_some() {
            return Err(self.closed_error());
        }
        match self.ws.send(Message::Binary(frame.to_vec().into())) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The next frame from the device, waiting at most `timeout` (`None`: nothing came in time;
    /// a zero timeout only takes what already arrived). An error once the socket is closed,
    /// with the server's reason if it gave one.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, ApiError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.closed.is_some() {
                return Err(self.closed_error());
            }
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            if let Err(e) = self.ws.get_ref().tcp().set_read_timeout(Some(left)) {
                return Err(self.transport(e.to_string()));
            }
            match self.ws.read() {
                Ok(Message::Binary(b)) => return Ok(Some(b.to_vec())),
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string()));
                    self.closed = Some((code, reason));
                    // tungstenite queued the answer to the close: send it.
                    let _ = self.ws.flush();
                }
                // Pings are answered by the library; nothing else is expected.
                Ok(_) => {}
                Err(WsError::Io(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    /// The server's close code and reason (e.g. `(1000, "replaced")` when another debugger
    /// attached to the device), once the server closed the socket.
    pub fn close_reason(&self) -> Option<(u16, &str)> {
        self.closed.as_ref().map(|(c, r)| (*c, r.as_str()))
    }

    /// Closes the socket (the debugger detaches), waiting briefly for the server's answer.
    pub fn close(mut self) -> Result<(), ApiError> {
        if self.closed.is_some() {
            return Ok(());
        }
        let bye = CloseFrame { code: CloseCode::Normal, reason: "detached".into() };
        self.ws.close(Some(bye)).map_err(|e| self.transport(e.to_string()))?;
        let _ = self.ws.get_ref().tcp().set_read_timeout(Some(Duration::from_secs(2)));
        // Until the server's close arrives (or the connection ends, or the wait runs out).
        while self.ws.read().is_ok() {}
        Ok(())
    }

    fn transport(&self, message: String) -> ApiError {
        ApiError::Transport { server: self.server.clone(), tls: false, message }
    }

    fn closed_error(&self) -> ApiError {
        match &self.closed {
            Some((code, reason)) if !reason.is_empty() => {
                self.transport(format!("debug session closed by the server: {reason} (code {code})"))
            }
            Some((code, _)) => self.transport(format!("debug session closed by the server (code {code})")),
            None => self.transport("debug session closed".into()),
        }
    }

    fn error(&mut self, e: WsError) -> ApiError {
        match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed if self.closed.is_some() => self.closed_error(),
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                self.closed = Some((1006, String::new()));
                self.transport("debug session closed: the connection ended without a close frame".into())
            }
            e => self.transport(format!("debug session: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(split_authority("127.0.0.1:7447", 80), Some(("127.0.0.1".into(), 7447)));
        assert_eq!(split_authority("keel.example", 443), Some(("keel.example".into(), 443)));
        assert_eq!(split_authority("[::1]:7447", 80), Some(("::1".into(), 7447)));
        assert_eq!(split_authority("[::1]", 443), Some(("::1".into(), 443)));
        assert_eq!(split_authority("host:notaport", 80), None);
    }

    #[test]
    fn bad_urls_and_unreachable_servers_are_errors() {
        let e = Client::new("http://127.0.0.1:1").debug_socket("kd01").unwrap_err();
        assert!(matches!(e, ApiError::Transport { .. }), "{e:?}");
        let e = Client::new("ftp://x").debug_socket("kd01").unwrap_err();
        assert!(matches!(e, ApiError::Local { .. }), "{e:?}");
    }
}
