//! Destination policy: which destinations the server may connect to on a device's behalf (HTTP(S)
//! requests, MQTT connections). Pure logic; the rules of an account are stored by
//! [`crate::settings`] ([`Store::destination_rules`](crate::store::Store::destination_rules)).
//!
//! A [`Rule`] allows or denies a target: a host name (`api.example.com`, exact) or a domain's
//! names (`*.example.com`: any name under `example.com`, not `example.com` itself), compared
//! case-insensitively with a trailing dot ignored; or a CIDR network (`10.1.0.0/16`,
//! `2001:db8::/32`; a bare address is `/32` or `/128`). A rule may be limited to one port and
//! one scheme (`http`, `https`, `mqtt`, `mqtts`); without them it applies to every port and
//! scheme.
//!
//! [`check`] decides a connection by its scheme, the host name it was asked for, its port and
//! **the IP address it will actually connect to** (after DNS resolution; the caller must connect
//! to exactly that address, so DNS rebinding cannot move it elsewhere after the check):
//!
//! 1. The rules are tried in order; a rule matches if its scheme and port (when given) match
//!    and its target matches (a host pattern: the host name; a network: the address). The first
//!    match decides:
//!    * a deny rule denies;
//!    * an allow rule on a network allows (this is how a private address is allowed);
//!    * an allow rule on a host name allows the *name*; the address is then judged by the
//!      network rules alone (the first that matches decides), and with none by the default
//!      address check below. So `allow *.example.com` never lets a name that resolves to
//!      `127.0.0.1` or `169.254.169.254` through.
//! 2. No rule matches: the default. Denied: the unencrypted schemes `http` and `mqtt`, and
//!    private or special addresses ([`special_address`]): IPv4 `0.0.0.0/8`, `10.0.0.0/8`,
//!    `100.64.0.0/10` (CGNAT), `127.0.0.0/8`, `169.254.0.0/16` (link-local, including the cloud
//!    metadata address `169.254.169.254`), `172.16.0.0/12`, `192.168.0.0/16`, `224.0.0.0/4`
//!    (multicast), `240.0.0.0/4` (reserved, including broadcast); IPv6 `::`, `::1`, `fc00::/7`,
//!    `fe80::/10`, `fec0::/10`, `ff00::/8`, `100::/64`, `64:ff9b:1::/48`, Teredo `2001::/32`;
//!    IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and
//!    6to4 (`2002::/16`) addresses are judged by the IPv4 address they carry. Allowed: a public
//!    address over `https` or `mqtts`.
//!
//! A network rule is compared with the address and, for an address that carries an IPv4
//! address (mapped, compatible, NAT64, 6to4), with that IPv4 address too: `deny 10.0.0.0/8`
//! also denies `::ffff:10.0.0.1`.
//!
//! The operator may append allow rules for every account with `KEEL_POLICY_ALLOW`
//! (comma-separated networks, any port and scheme; see [`operator_rules`]), e.g. for tests or a
//! private deployment whose brokers live on a private network. They come after the account's own
//! rules, so an account's deny rule still wins.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The environment variable of [`operator_rules`].
pub const POLICY_ALLOW_ENV: &str = "KEEL_POLICY_ALLOW";

/// Rules one account may hold.
pub const MAX_RULES_PER_ACCOUNT: usize = 256;

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Allow the connection.
    Allow,
    /// Refuse it.
    Deny,
}

impl Action {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }

    /// The action of `allow` or `deny` (any case).
    pub fn parse(s: &str) -> Option<Action> {
        match s.to_ascii_lowercase().as_str() {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            _ => None,
        }
    }
}

/// The protocols the server speaks for devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (unencrypted).
    Http,
    /// HTTP over TLS.
    Https,
    /// Plain MQTT (unencrypted).
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
}

impl Scheme {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
        }
    }

    /// The scheme of a name (any case).
    pub fn parse(s: &str) -> Option<Scheme> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            "mqtt" => Some(Scheme::Mqtt),
            "mqtts" => Some(Scheme::Mqtts),
            _ => None,
        }
    }

    /// Whether it is encrypted (TLS).
    pub fn encrypted(self) -> bool {
        matches!(self, Scheme::Https | Scheme::Mqtts)
    }
}

/// An IP network: an address and a prefix length (the address's host bits are zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr/prefix`; `None` if the prefix is too long for the address family.
    /// Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        match addr {
            IpAddr::V4(a) if prefix <= 32 => {
                Some(Cidr { addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))), prefix })
            }
            IpAddr::V6(a) if prefix <= 128 => {
                Some(Cidr { addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))), prefix })
            }
            _ => None,
        }
    }

    /// Parses `ADDR/PREFIX` or a bare address (a single-address network).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                // Digits only: no sign, no spaces.
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?))
            }
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let full = if addr.is_ipv4() { 32 } else { 128 };
        Cidr::new(addr, prefix.unwrap_or(full))
    }

    /// Whether `ip` is in the network (same address family only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask128(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

/// What a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Exactly this host name (lowercase, no trailing dot).
    Host(String),
    /// Every name under this domain (`*.example.com` holds `example.com`), not the domain itself.
    Suffix(String),
    /// The addresses of a network.
    Cidr(Cidr),
}

impl Target {
    /// Parses a target: a network (`10.0.0.0/8`, `::1`, `127.0.0.1`), `*.DOMAIN`, or a host name
    /// (letters, digits, `-` and `_` in dot-separated labels of 1..=63 characters that neither
    /// start nor end with `-`, at most 253 in all; any case; a trailing dot is ignored).
    pub fn parse(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if let Some(c) = Cidr::parse(s) {
            return Ok(Target::Cidr(c));
        }
        if s.contains('/') || s.contains(':') {
            return Err(format!("'{s}' is neither a host name nor a network: a network is ADDRESS/PREFIX"));
        }
        let (suffix, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = normalize_host(name)
            .ok_or_else(|| format!("'{s}' is not a host name, `*.` and a domain, or a network (CIDR)"))?;
        if name.parse::<IpAddr>().is_ok() || (!suffix && looks_like_ipv4(&name)) {
            return Err(format!("'{s}' is not a valid address or host name"));
        }
        Ok(if suffix { Target::Suffix(name) } else { Target::Host(name) })
    }

    fn matches(&self, host: Option<&str>, ip: IpAddr) -> bool {
        match self {
            Target::Host(h) => host == Some(h.as_str()),
            Target::Suffix(d) => host.is_some_and(|h| {
                h.len() > d.len() + 1 && h.ends_with(d.as_str()) && h.as_bytes()[h.len() - d.len() - 1] == b'.'
            }),
            Target::Cidr(c) => c.contains(ip) || embedded_v4(ip).is_some_and(|v4| c.contains(IpAddr::V4(v4))),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Host(h) => f.write_str(h),
            Target::Suffix(d) => write!(f, "*.{d}"),
            Target::Cidr(c) => c.fmt(f),
        }
    }
}

/// A dotted-decimal-looking name (`1.2.3.4.`, `010.1.1.1`): refused as a host name, since
/// resolvers disagree on what it means.
fn looks_like_ipv4(name: &str) -> bool {
    name.split('.').all(|l| !l.is_empty() && l.bytes().all(|c| c.is_ascii_digit()))
}

/// A host name lowercased without its trailing dot, if it is a valid name (see
/// [`Target::parse`]).
pub fn normalize_host(host: &str) -> Option<String> {
    let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        });
    ok.then_some(h)
}

/// One rule of an account's destination policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Its id (`pr-` + 12 hex digits; `operator-N` for the operator's `KEEL_POLICY_ALLOW`).
    pub id: String,
    /// Allow or deny.
    pub action: Action,
    /// What it applies to.
    pub target: Target,
    /// Only this port (`None`: any).
    pub port: Option<u16>,
    /// Only this scheme (`None`: any).
    pub scheme: Option<Scheme>,
}

impl Rule {
    /// Whether the rule's port and scheme constraints admit the connection.
    fn admits(&self, scheme: Scheme, port: u16) -> bool {
        self.port.is_none_or(|p| p == port) && self.scheme.is_none_or(|s| s == scheme)
    }
}

/// The outcome of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The connection may be made.
    Allow,
    /// It may not.
    Deny {
        /// Why, for logs and for the device's error.
        reason: String,
        /// The rule that denied it, if a rule did (else the default did).
        rule: Option<String>,
    },
}

impl Decision {
    /// Whether it allows.
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    fn deny(reason: impl Into<String>, rule: Option<&Rule>) -> Decision {
        Decision::Deny { reason: reason.into(), rule: rule.map(|r| r.id.clone()) }
    }
}

/// Decides whether the server may connect to `ip` (the resolved address it will connect to) on
/// `port` with `scheme`, for a request to `host` (a host name, or an address literal), under
/// `rules` (the account's rules, then the operator's). See the module's documentation.
pub fn check(rules: &[Rule], scheme: &str, host: &str, port: u16, ip: IpAddr) -> Decision {
    let Some(scheme) = Scheme::parse(scheme) else {
        return Decision::deny(format!("unsupported scheme '{scheme}' (http, https, mqtt or mqtts)"), None);
    };
    // A literal address is no name: only network rules judge it.
    let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok();
    let name = if literal { None } else { normalize_host(host) };
    if !literal && name.is_none() {
        return Decision::deny(format!("'{host}' is not a valid host name"), None);
    }
    for r in rules.iter().filter(|r| r.admits(scheme, port)) {
        if !r.target.matches(name.as_deref(), ip) {
            continue;
        }
        return match (r.action, &r.target) {
            (Action::Deny, _) => Decision::deny(format!("denied by rule {} ({})", r.id, r.target), Some(r)),
            (Action::Allow, Target::Cidr(_)) => Decision::Allow,
            (Action::Allow, _) => address_decision(rules, scheme, port, ip, true),
        };
    }
    address_decision(rules, scheme, port, ip, false)
}

/// The address's decision by the network rules alone (first match), else the default.
/// `name_allowed`: a host rule allowed the name (then the scheme needs no default check).
fn address_decision(rules: &[Rule], scheme: Scheme, port: u16, ip: IpAddr, name_allowed: bool) -> Decision {
    let networks = rules.iter().filter(|r| matches!(r.target, Target::Cidr(_)) && r.admits(scheme, port));
    if let Some(r) = networks.into_iter().find(|r| r.target.matches(None, ip)) {
        return match r.action {
            Action::Allow => Decision::Allow,
            Action::Deny => Decision::deny(format!("address {ip} denied by rule {} ({})", r.id, r.target), Some(r)),
        };
    }
    if let Some(what) = special_address(ip) {
        return Decision::deny(
            format!(
                "{ip} is a {what} address: denied unless a network rule allows it (`keel policy allow {ip}/{}`)",
                if ip.is_ipv4() { 32 } else { 128 }
            ),
            None,
        );
    }
    if !name_allowed && !scheme.encrypted() {
        return Decision::deny(
            format!(
                "{} is unencrypted: denied unless a rule allows it (`--scheme {}`)",
                scheme.as_str(),
                scheme.as_str()
            ),
            None,
        );
    }
    Decision::Allow
}

/// The IPv4 address an IPv6 address carries and is routed by: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::/48`.
pub fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let bits = u128::from(v6);
    let low = Ipv4Addr::from(bits as u32);
    let s = v6.segments();
    if bits >> 32 == 0xffff || (bits >> 32 == 0 && bits > 1) || bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    None
}

/// What kind of private or special address `ip` is, if it is one the default denies (see the
/// module's documentation); `None` for a public address.
pub fn special_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(ip) {
                return special_v4(v4);
            }
            let b = u128::from(v6);
            let in_net = |net: u128, prefix: u32| b >> (128 - prefix) == net >> (128 - prefix);
            if b == 0 {
                Some("unspecified")
            } else if b == 1 {
                Some("loopback")
            } else if in_net(0xfc00 << 112, 7) {
                Some("unique local (private)")
            } else if in_net(0xfe80 << 112, 10) {
                Some("link-local")
            } else if in_net(0xfec0 << 112, 10) {
                Some("site-local")
            } else if in_net(0xff00 << 112, 8) {
                Some("multicast")
            } else if in_net(0x0100 << 112, 64) {
                Some("discard-only")
            } else if in_net(0x0064_ff9b_0001 << 80, 48) {
                Some("local-use NAT64")
            } else if in_net(0x2001_0000 << 96, 32) {
                Some("Teredo")
            } else {
                None
            }
        }
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let a = u32::from(ip);
    let in_net = |net: u32, prefix: u32| a >> (32 - prefix) == net >> (32 - prefix);
    let o = ip.octets();
    if o == [169, 254, 169, 254] {
        Some("cloud metadata (link-local)")
    } else if in_net(0, 8) {
        Some("\"this network\" (0.0.0.0/8)")
    } else if in_net(0x0a00_0000, 8) || in_net(0xac10_0000, 12) || in_net(0xc0a8_0000, 16) {
        Some("private")
    } else if in_net(0x6440_0000, 10) {
        Some("shared (CGNAT)")
    } else if in_net(0x7f00_0000, 8) {
        Some("loopback")
    } else if in_net(0xa9fe_0000, 16) {
        Some("link-local")
    } else if in_net(0xc000_0000, 24) {
        Some("IETF protocol assignments (192.0.0.0/24)")
    } else if in_net(0xc612_0000, 15) {
        Some("benchmarking (198.18.0.0/15)")
    } else if in_net(0xc000_0200, 24) || in_net(0xc633_6400, 24) || in_net(0xcb00_7100, 24) {
        Some("documentation")
    } else if in_net(0xe000_0000, 4) {
        Some("multicast")
    } else if in_net(0xf000_0000, 4) {
        Some("reserved or broadcast")
    } else {
        None
    }
}

/// Parses a rule's parts as the API and the database give them.
pub fn parse_rule(
    id: &str,
    action: &str,
    target: &str,
    port: Option<u16>,
    scheme: Option<&str>,
) -> Result<Rule, String> {
    let action = Action::parse(action).ok_or_else(|| format!("action '{action}': must be allow or deny"))?;
    let target = Target::parse(target)?;
    let scheme = match scheme {
        None => None,
        Some(s) => Some(Scheme::parse(s).ok_or_else(|| format!("scheme '{s}': must be http, https, mqtt or mqtts"))?),
    };
    if port == Some(0) {
        return Err("port must be 1..=65535".into());
    }
    Ok(Rule { id: id.to_string(), action, target, port, scheme })
}

/// The operator's allow rules from a `KEEL_POLICY_ALLOW` value: comma-separated networks
/// (`127.0.0.1/32,10.0.0.0/8`), each an allow rule for any port and scheme, with ids
/// `operator-1`, `operator-2`, ...; empty entries are skipped.
pub fn operator_rules(value: &str) -> Result<Vec<Rule>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            let c = Cidr::parse(s).ok_or_else(|| {
                format!("{POLICY_ALLOW_ENV}: '{s}' is not a network (ADDRESS/PREFIX), e.g. 10.0.0.0/8")
            })?;
            Ok(Rule {
                id: format!("operator-{}", i + 1),
                action: Action::Allow,
                target: Target::Cidr(c),
                port: None,
                scheme: None,
            })
        })
        .collect()
}

/// [`operator_rules`] of the environment's `KEEL_POLICY_ALLOW` (none if it is unset).
pub fn operator_rules_from_env() -> Result<Vec<Rule>, String> {
    match std::env::var(POLICY_ALLOW_ENV) {
        Ok(v) => operator_rules(&v),
        Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
        Err(e) => Err(format!("{POLICY_ALLOW_ENV}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, action: &str, target: &str, port: Option<u16>, scheme: Option<&str>) -> Rule {
        parse_rule(id, action, target, port, scheme).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn allowed(rules: &[Rule], scheme: &str, host: &str, port: u16, addr: &str) -> bool {
        check(rules, scheme, host, port, ip(addr)).allowed()
    }

    #[test]
    fn defaults_allow_public_tls_and_deny_the_rest() {
        assert!(allowed(&[], "https", "api.example.com", 443, "93.184.216.34"));
        assert!(allowed(&[], "mqtts", "broker.example.com", 8883, "2606:2800:220:1:248:1893:25c8:1946"));
        assert!(allowed(&[], "HTTPS", "API.Example.COM.", 443, "93.184.216.34"));
        // Unencrypted, unknown schemes.
        assert!(!allowed(&[], "http", "api.example.com", 80, "93.184.216.34"));
        assert!(!allowed(&[], "mqtt", "broker.example.com", 1883, "93.184.216.34"));
        assert!(!allowed(&[], "ftp", "api.example.com", 21, "93.184.216.34"));
        assert!(!allowed(&[], "", "api.example.com", 443, "93.184.216.34"));
        // A bad host name.
        assert!(!allowed(&[], "https", "exa mple.com", 443, "93.184.216.34"));
        assert!(!allowed(&[], "https", "", 443, "93.184.216.34"));
    }

    #[test]
    fn special_addresses_are_denied_by_default() {
        for a in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::ffff:10.1.2.3",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:0001::1",
            "2002:c0a8:0101::",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "100::1",
            "192.0.0.9",
            "198.18.0.1",
            "198.19.255.254",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.200",
            "::ffff:198.18.0.1",
        ] {
            assert!(special_address(ip(a)).is_some(), "{a} should be special");
            let d = check(&[], "https", "api.example.com", 443, ip(a));
            assert!(matches!(&d, Decision::Deny { rule: None, .. }), "{a}: {d:?}");
        }
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.253.255.255",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert_eq!(special_address(ip(a)), None, "{a} should be public");
            assert!(allowed(&[], "https", "api.example.com", 443, a), "{a}");
        }
        let Decision::Deny { reason, .. } = check(&[], "https", "x.example.com", 443, ip("169.254.169.254")) else {
            panic!()
        };
        assert!(reason.contains("metadata"), "{reason}");
    }

    #[test]
    fn an_allow_for_one_address_and_port_allows_only_that() {
        let rules = [rule("pr-1", "allow", "127.0.0.1/32", Some(8443), Some("https"))];
        assert!(allowed(&rules, "https", "localhost", 8443, "127.0.0.1"));
        assert!(allowed(&rules, "https", "127.0.0.1", 8443, "127.0.0.1"));
        // The mapped form of the same address is the same destination.
        assert!(allowed(&rules, "https", "localhost", 8443, "::ffff:127.0.0.1"));
        assert!(!allowed(&rules, "https", "localhost", 8444, "127.0.0.1"));
        assert!(!allowed(&rules, "http", "localhost", 8443, "127.0.0.1"));
        assert!(!allowed(&rules, "https", "localhost", 8443, "127.0.0.2"));
        assert!(!allowed(&rules, "https", "localhost", 8443, "::1"));
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let deny_first =
            [rule("pr-d", "deny", "evil.example.com", None, None), rule("pr-a", "allow", "*.example.com", None, None)];
        let d = check(&deny_first, "https", "EVIL.example.com.", 443, ip("93.184.216.34"));
        assert_eq!(
            d,
            Decision::Deny { reason: "denied by rule pr-d (evil.example.com)".into(), rule: Some("pr-d".into()) }
        );
        assert!(allowed(&deny_first, "https", "good.example.com", 443, "93.184.216.34"));
        // The other way round the allow matches first.
        let allow_first = [deny_first[1].clone(), deny_first[0].clone()];
        assert!(allowed(&allow_first, "https", "evil.example.com", 443, "93.184.216.34"));
        // A deny of a network before an allow of the same address.
        let rules = [rule("pr-d", "deny", "10.0.0.0/8", None, None), rule("pr-a", "allow", "10.1.2.3", None, None)];
        assert!(!allowed(&rules, "https", "internal", 443, "10.1.2.3"));
        assert!(!allowed(&rules, "https", "internal", 443, "::ffff:10.1.2.3"));
    }

    #[test]
    fn a_host_allow_does_not_allow_a_private_address() {
        // DNS rebinding: the allowed name resolves to loopback or the metadata address.
        let rules = [rule("pr-a", "allow", "*.example.com", None, None)];
        for a in ["127.0.0.1", "169.254.169.254", "::ffff:127.0.0.1", "::1", "10.0.0.1", "0.0.0.0"] {
            assert!(!allowed(&rules, "https", "api.example.com", 443, a), "{a}");
        }
        // A network rule can allow the private address for that name.
        let rules = [rules[0].clone(), rule("pr-n", "allow", "10.0.0.0/8", Some(443), None)];
        assert!(allowed(&rules, "https", "api.example.com", 443, "10.0.0.1"));
        assert!(!allowed(&rules, "https", "api.example.com", 444, "10.0.0.1"));
        // A network deny after a host allow still judges the address.
        let rules =
            [rule("pr-a", "allow", "api.example.com", None, None), rule("pr-d", "deny", "93.184.216.0/24", None, None)];
        assert!(!allowed(&rules, "https", "api.example.com", 443, "93.184.216.34"));
        // A host allow with a scheme allows that scheme, even unencrypted.
        let rules = [rule("pr-a", "allow", "broker.example.com", Some(1883), Some("mqtt"))];
        assert!(allowed(&rules, "mqtt", "broker.example.com", 1883, "93.184.216.34"));
        assert!(!allowed(&rules, "mqtt", "broker.example.com", 1884, "93.184.216.34"));
        assert!(!allowed(&rules, "mqtt", "other.example.com", 1883, "93.184.216.34"));
    }

    #[test]
    fn host_patterns() {
        let rules = [rule("pr-a", "allow", "*.Example.COM.", None, Some("http"))];
        assert_eq!(rules[0].target, Target::Suffix("example.com".into()));
        assert!(allowed(&rules, "http", "a.example.com", 80, "93.184.216.34"));
        assert!(allowed(&rules, "http", "a.b.EXAMPLE.com.", 80, "93.184.216.34"));
        assert!(!allowed(&rules, "http", "example.com", 80, "93.184.216.34"));
        assert!(!allowed(&rules, "http", "badexample.com", 80, "93.184.216.34"));
        assert!(!allowed(&rules, "http", "example.com.evil.net", 80, "93.184.216.34"));
        // A literal address is not a name.
        let rules = [rule("pr-a", "allow", "api.example.com", None, Some("http"))];
        assert!(!allowed(&rules, "http", "93.184.216.34", 80, "93.184.216.34"));
        for bad in ["", "*.", "*", "a..b", "-", "exa mple.com", "a/b", "1.2.3.4.5", "10.0.0.0/33", "::1/129", "*.*.com"]
        {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Target::parse("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Target::parse("::1").unwrap().to_string(), "::1/128");
        assert_eq!(Target::parse("API.example.com.").unwrap().to_string(), "api.example.com");
    }

    #[test]
    fn zero_prefix_and_operator_rules() {
        let rules = operator_rules(" 127.0.0.1/32, ,::1 ").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].id, "operator-2");
        assert!(allowed(&rules, "mqtt", "localhost", 1883, "127.0.0.1"));
        assert!(allowed(&rules, "http", "localhost", 80, "::1"));
        assert!(!allowed(&rules, "mqtt", "localhost", 1883, "127.0.0.2"));
        assert!(operator_rules("127.0.0.1/32,nope").is_err());
        assert!(operator_rules("").unwrap().is_empty());
        // 0.0.0.0/0 holds every IPv4 address (and mapped ones), not IPv6.
        let all = [rule("pr-a", "allow", "0.0.0.0/0", None, None)];
        assert!(allowed(&all, "http", "x", 80, "127.0.0.1"));
        assert!(allowed(&all, "http", "x", 80, "::ffff:127.0.0.1"));
        assert!(!allowed(&all, "http", "x", 80, "::1"));
        assert!(parse_rule("x", "allow", "a.com", Some(0), None).is_err());
        assert!(parse_rule("x", "permit", "a.com", None, None).is_err());
        assert!(parse_rule("x", "allow", "a.com", None, Some("ftp")).is_err());
    }
}
