//! The C codec `sdk/c/include/keel_chan.h` must write and read the same bytes as [`Msg`].
//!
//! Builds `sdk/c/tests/keel_chan_test.c` with the host's C compiler (`$CC`, else `cc`; with
//! AddressSanitizer and UBSan where the compiler has them), then:
//! * compares its encodings of every request type with [`Msg::encode`], byte for byte, and
//!   checks the requests it must refuse (lists over their limits, a `str` over 65,535 bytes, every
//!   buffer too small, with nothing written past the buffer);
//! * feeds it every answer type encoded by [`Msg::encode`] and compares its decoding field by
//!   field, checks it refuses every truncation and a trailing byte, and feeds it thousands of
//!   mutated messages on which it must agree with [`Msg::decode`] (accept, refuse, and what).

use core::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keel_channel::msg::{http_result, mqtt_session, Error, Items, Keys, Msg, Strs, Subs, Will};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The test program, built once for all tests (they run in parallel).
fn build() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(build_once).clone()
}

fn build_once() -> PathBuf {
    let root = repo_root();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("keel_chan_test-{}", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = root.join("sdk/c/tests/keel_chan_test.c");
    let inc = root.join("sdk/c/include");
    let base = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g"];
    for extra in [&["-fsanitize=address,undefined", "-fno-sanitize-recover=all"][..], &[][..]] {
        let st = Command::new(&cc)
            .args(base)
            .args(extra)
            .arg("-I")
            .arg(&inc)
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
        if st.success() {
            return out;
        }
    }
    panic!("{cc} could not build {}", src.display());
}

fn run(bin: &Path, mode: &str, input: &str) -> String {
    let mut child = Command::new(bin)
        .arg(mode)
        .env("ASAN_OPTIONS", "detect_leaks=1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "keel_chan_test {mode}: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn enc(m: &Msg<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 17];
    let n = m.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn c_encoder_matches_msg_encode() {
    let bin = build();
    let out = run(&bin, "enc", "");
    let lines: Vec<(&str, &str)> = out.lines().map(|l| l.split_once(' ').unwrap()).collect();
    let get = |label: &str| lines.iter().find(|(l, _)| *l == label).unwrap_or_else(|| panic!("no {label}")).1;
    let body: Vec<u8> = (0..=255u8).collect();
    let headers: &[&[u8]] = &[b"Accept: text/plain", b"X-Keel: 1"];
    let zeros = [0u8; 300];
    let expected: Vec<(&str, Msg<'_>)> = vec![
        (
            "http_get",
            Msg::HttpRequest {
                method: b"GET",
                url: b"https://example.com/x?y=1",
                timeout_ms: 5000,
                headers: Strs::Items(headers),
                body: b"",
            },
        ),
        (
            "http_post",
            Msg::HttpRequest {
                method: b"POST",
                url: b"https://10.0.2.2:8443/echo",
                timeout_ms: 60000,
                headers: Strs::Items(&[]),
                body: &body,
            },
        ),
        ("config", Msg::ConfigFetch { keys: Keys::Items(&[(0, 1, b"greeting"), (1, 0, b"api/key")]) }),
        (
            "connect_will",
            Msg::MqttConnect {
                clean_start: true,
                keepalive_s: 60,
                will: Some(Will { topic: b"dev/gone", payload: b"bye", qos: 1, retain: true }),
            },
        ),
        ("connect", Msg::MqttConnect { clean_start: false, keepalive_s: 0, will: None }),
        ("subscribe", Msg::MqttSubscribe { id: 7, topics: Subs::Items(&[(b"cmd/#", 1), (b"x", 0)]) }),
        ("unsubscribe", Msg::MqttUnsubscribe { id: 8, topics: Strs::Items(&[b"cmd/#"]) }),
        ("publish", Msg::MqttPublish { id: 9, qos: 1, retain: false, topic: b"t", payload: &zeros }),
        (
            "publish_retain",
            Msg::MqttPublish { id: u32::MAX, qos: 0, retain: true, topic: b"sensor/kd00", payload: b"{\"t\":21}" },
        ),
        ("ack", Msg::MqttAck { id: 3 }),
        ("disconnect", Msg::MqttDisconnect),
    ];
    for (label, m) in &expected {
        assert_eq!(get(label), hex(&enc(m)), "{label}: C and Rust encodings differ");
    }
    // What the Rust encoder refuses, the C one refuses too (KEEL_MSG_ERR_MALFORMED = -2).
    let many: [&[u8]; 33] = [b"A: b"; 33];
    let m = Msg::HttpRequest {
        method: b"GET",
        url: b"https://a/",
        timeout_ms: 5000,
        headers: Strs::Items(&many),
        body: b"",
    };
    assert_eq!(m.encode(&mut [0; 4096]), Err(Error::Malformed));
    assert_eq!(get("too_many_headers"), "err=-2");
    let keys = [(0u8, 1u8, &b"greeting"[..]); 17];
    assert_eq!(Msg::ConfigFetch { keys: Keys::Items(&keys) }.encode(&mut [0; 4096]), Err(Error::Malformed));
    assert_eq!(get("too_many_keys"), "err=-2");
    let subs = [(&b"cmd/#"[..], 1u8); 9];
    assert_eq!(Msg::MqttSubscribe { id: 1, topics: Subs::Items(&subs) }.encode(&mut [0; 4096]), Err(Error::Malformed));
    assert_eq!(get("too_many_topics"), "err=-2");
    let long = vec![0u8; 65536];
    let m = Msg::MqttPublish { id: 1, qos: 0, retain: false, topic: &long, payload: b"" };
    assert_eq!(m.encode(&mut vec![0; 70000]), Err(Error::Malformed));
    assert_eq!(get("long_topic"), "err=-2");
    assert_eq!(get("too_small"), "bad=0");
    assert!(!out.contains("OVERFLOW"), "{out}");
}

/// The C test's description of a decoded answer (see `describe()` in keel_chan_test.c), or the
/// error it must report: -2 malformed, -3 unknown type (requests included: apps never receive
/// them).
fn describe(b: &[u8]) -> String {
    use keel_channel::msg::ty;
    const REQUESTS: [u8; 8] = [
        ty::HTTP_REQUEST,
        ty::CONFIG_FETCH,
        ty::MQTT_CONNECT,
        ty::MQTT_SUBSCRIBE,
        ty::MQTT_UNSUBSCRIBE,
        ty::MQTT_PUBLISH,
        ty::MQTT_ACK,
        ty::MQTT_DISCONNECT,
    ];
    if b.len() >= 8 && REQUESTS.contains(&b[0]) {
        // The C decoder does not read requests at all, valid or not.
        return "err=-3".into();
    }
    match Msg::decode(b) {
        Err(Error::UnknownType(_)) => "err=-3".into(),
        Err(_) => "err=-2".into(),
        Ok(m) => match m {
            Msg::HttpResponse { result, status, headers, body } => format!(
                "http_response result={result} status={status} headers=[{}] body={}",
                headers.iter().map(hex).collect::<Vec<_>>().join(","),
                hex(body)
            ),
            Msg::ConfigResult { result, items } => format!(
                "config_result result={result} items=[{}]",
                items.iter().map(|(r, v)| format!("{r}:{}", hex(v))).collect::<Vec<_>>().join(",")
            ),
            Msg::MqttConnectResult { state, reason, session_present } => {
                format!("mqtt_connect_result state={state} reason={reason} session_present={}", session_present as u8)
            }
            Msg::MqttSubscribeResult { id, state, codes } => {
                format!("mqtt_subscribe_result id={id} state={state} codes={}", hex(codes))
            }
            Msg::MqttUnsubscribeResult { id, state } => format!("mqtt_unsubscribe_result id={id} state={state}"),
            Msg::MqttPublishResult { id, state, reason } => {
                format!("mqtt_publish_result id={id} state={state} reason={reason}")
            }
            Msg::MqttMessage { id, qos, retain, topic, payload } => format!(
                "mqtt_message id={id} qos={qos} retain={} topic={} payload={}",
                retain as u8,
                hex(topic),
                hex(payload)
            ),
            Msg::MqttLost { reason, topic, len } => format!("mqtt_lost reason={reason} topic={} len={len}", hex(topic)),
            Msg::MqttDisconnectResult { state, code } => format!("mqtt_disconnect_result state={state} code={code}"),
            Msg::MqttStatus { state, reason } => format!("mqtt_status state={state} reason={}", hex(reason)),
            Msg::Error { code, text } => format!("error code={code} text={}", hex(text)),
            _ => "err=-3".into(),
        },
    }
}

fn answers() -> Vec<Vec<u8>> {
    let headers: &[&[u8]] = &[b"Content-Type: text/plain", b"X-Keel: 1", b""];
    let big = vec![0x5Au8; 3000];
    let max_headers: [&[u8]; 32] = [b"A: b"; 32];
    let max_items: [(u8, &[u8]); 16] = [(0, b"v"); 16];
    [
        Msg::HttpResponse { result: 0, status: 200, headers: Strs::Items(headers), body: b"hello" },
        Msg::HttpResponse { result: http_result::REQUEST_FAILED, status: 0, headers: Strs::Items(&[]), body: b"dns" },
        Msg::HttpResponse { result: 0, status: 404, headers: Strs::Items(&max_headers), body: &big },
        Msg::ConfigResult { result: 0, items: Items::Items(&[(0, b"hi"), (4, b""), (6, b"x")]) },
        Msg::ConfigResult { result: 1, items: Items::Items(&[]) },
        Msg::ConfigResult { result: 0, items: Items::Items(&max_items) },
        Msg::MqttConnectResult { state: 0, reason: 0, session_present: true },
        Msg::MqttConnectResult { state: 9, reason: 0x87, session_present: false },
        Msg::MqttSubscribeResult { id: 7, state: 0, codes: &[1, 0, 0x80] },
        Msg::MqttUnsubscribeResult { id: 8, state: 3 },
        Msg::MqttPublishResult { id: u32::MAX, state: 0, reason: 16 },
        Msg::MqttMessage { id: 42, qos: 1, retain: true, topic: b"command/kd00", payload: b"on" },
        Msg::MqttMessage { id: 0, qos: 0, retain: false, topic: b"", payload: &big },
        Msg::MqttLost { reason: 1, topic: b"big", len: 100_000 },
        Msg::MqttDisconnectResult { state: 0, code: 0x8E },
        Msg::MqttStatus { state: mqtt_session::RECONNECTING, reason: b"broker closed the connection" },
        Msg::Error { code: http_result::BAD_REQUEST, text: b"malformed" },
    ]
    .iter()
    .map(enc)
    .collect()
}

#[test]
fn c_decoder_matches_msg_decode() {
    let bin = build();
    let answers = answers();
    let mut input = String::new();
    let mut expected = Vec::new();
    for (i, b) in answers.iter().enumerate() {
        let label = format!("T{i}");
        let _ = writeln!(input, "{label} {}", hex(b));
        expected.push(format!("{label} {} trunc_ok=0 trail_ok=0", describe(b)));
    }
    // Hostile messages (as in msg.rs's tests) and the requests, which apps never receive.
    let mut hostile: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x02, 0, 0, 0],
        vec![0x02, 0, 33, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0, 0, 0],
        vec![0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0xFF, 0xFF, 0xFF, 0xFF],
        vec![0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0, 0, 0],
        vec![0x55, 0, 0, 0, 0, 0, 0, 0],
        vec![0x28, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x23, 0, 9, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        vec![0x11, 0, 17, 0, 0, 0, 0, 0, 0],
    ];
    hostile.push(enc(&Msg::MqttAck { id: 3 }));
    hostile.push(enc(&Msg::MqttPublish { id: 1, qos: 0, retain: false, topic: b"t", payload: b"p" }));
    hostile.push(enc(&Msg::HttpRequest {
        method: b"GET",
        url: b"https://a/",
        timeout_ms: 5000,
        headers: Strs::Items(&[]),
        body: b"",
    }));
    // Mutations of every answer: flipped bytes, changed lengths, cut and grown messages. The C
    // decoder must agree with the Rust one on each (same verdict, same fields).
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..4000 {
        let mut b = answers[round % answers.len()].clone();
        for _ in 0..1 + rnd() % 3 {
            match rnd() % 4 {
                0 if !b.is_empty() => {
                    let i = (rnd() as usize) % b.len();
                    b[i] ^= 1 << (rnd() % 8);
                }
                1 if !b.is_empty() => {
                    let i = (rnd() as usize) % b.len();
                    b[i] = [0, 1, 2, 0x7F, 0x80, 0xFF][(rnd() % 6) as usize];
                }
                2 if !b.is_empty() => {
                    let n = (rnd() as usize) % b.len();
                    b.truncate(n);
                }
                _ => b.push(rnd() as u8),
            }
        }
        hostile.push(b);
    }
    for (i, b) in hostile.iter().enumerate() {
        let label = format!("H{i}");
        let _ = writeln!(input, "{label} {}", hex(b));
        expected.push(format!("{label} {}", describe(b)));
    }
    let out = run(&bin, "dec", &input);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), expected.len(), "{out}");
    let mut accepted = 0;
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(*g, e, "C and Rust decodings differ");
        accepted += !e.contains("err=") as usize;
    }
    // The mutations exercise both verdicts.
    assert!(accepted > answers.len() + 100, "only {accepted} messages decoded");
    assert!(expected.len() - accepted > 1000);
}

/// `NAME -> value` for the `#define NAME value` lines of keel_chan.h.
fn header_constants() -> std::collections::HashMap<String, i64> {
    let text = std::fs::read_to_string(repo_root().join("sdk/c/include/keel_chan.h")).unwrap();
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("#define ") else { continue };
        let Some((name, v)) = rest.split_once(char::is_whitespace) else { continue };
        let v = v.trim().trim_start_matches('(').trim_end_matches(')').trim_end_matches('u');
        let parsed = if let Some(h) = v.strip_prefix("0x") { i64::from_str_radix(h, 16).ok() } else { v.parse().ok() };
        if let Some(p) = parsed {
            out.insert(name.to_string(), p);
        }
    }
    out
}

#[test]
fn c_constants_match_msg_rs() {
    use keel_channel::msg::{
        config, config_result, mqtt_state, ty, HEADER_LEN, MAX_CONFIG_KEYS, MAX_HTTP_HEADERS, MAX_MQTT_TOPICS,
    };
    let c = header_constants();
    let check = |prefix: &str, list: &[(&str, i64)]| {
        for (name, v) in list {
            let full = format!("{prefix}{name}");
            assert_eq!(c.get(&full), Some(v), "{full}");
        }
        let mut want: Vec<String> = list.iter().map(|(n, _)| format!("{prefix}{n}")).collect();
        want.sort();
        let mut have: Vec<String> = c.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        have.sort();
        assert_eq!(have, want, "keel_chan.h defines other {prefix}* constants");
    };
    check(
        "KEEL_MSG_HTTP_",
        &[
            ("REQUEST", ty::HTTP_REQUEST as i64),
            ("RESPONSE", ty::HTTP_RESPONSE as i64),
            ("OK", http_result::OK as i64),
            ("UNSUPPORTED_SCHEME", http_result::UNSUPPORTED_SCHEME as i64),
            ("UNSUPPORTED_METHOD", http_result::UNSUPPORTED_METHOD as i64),
            ("INVALID_HEADERS", http_result::INVALID_HEADERS as i64),
            ("INVALID_TIMEOUT", http_result::INVALID_TIMEOUT as i64),
            ("REQUEST_FAILED", http_result::REQUEST_FAILED as i64),
            ("RESPONSE_TOO_LARGE", http_result::RESPONSE_TOO_LARGE as i64),
            ("DENIED", http_result::DENIED as i64),
            ("TIMEOUT", http_result::TIMEOUT as i64),
            ("RATE_LIMITED", http_result::RATE_LIMITED as i64),
            ("BAD_REQUEST", http_result::BAD_REQUEST as i64),
            ("ALREADY_SENT", http_result::ALREADY_SENT as i64),
        ],
    );
    check(
        "KEEL_MSG_CONFIG_",
        &[
            ("FETCH", ty::CONFIG_FETCH as i64),
            ("RESULT", ty::CONFIG_RESULT as i64),
            ("OK", config_result::OK as i64),
            ("RESPONSE_TOO_LARGE", config_result::RESPONSE_TOO_LARGE as i64),
            ("BAD_REQUEST", config_result::BAD_REQUEST as i64),
            ("TOO_MANY_KEYS", config_result::TOO_MANY_KEYS as i64),
            ("NOT_FOUND", config_result::NOT_FOUND as i64),
            ("INVALID_KEY", config_result::INVALID_KEY as i64),
            ("SERVER_ERROR", config_result::SERVER_ERROR as i64),
            ("SCOPE_ACCOUNT", config::SCOPE_ACCOUNT as i64),
            ("SCOPE_DEVICE", config::SCOPE_DEVICE as i64),
            ("STORE_SECRET", config::STORE_SECRET as i64),
            ("STORE_CONFIG", config::STORE_CONFIG as i64),
        ],
    );
    check(
        "KEEL_MSG_MQTT_",
        &[
            ("CONNECT", ty::MQTT_CONNECT as i64),
            ("CONNECT_RESULT", ty::MQTT_CONNECT_RESULT as i64),
            ("SUBSCRIBE", ty::MQTT_SUBSCRIBE as i64),
            ("SUBSCRIBE_RESULT", ty::MQTT_SUBSCRIBE_RESULT as i64),
            ("UNSUBSCRIBE", ty::MQTT_UNSUBSCRIBE as i64),
            ("UNSUBSCRIBE_RESULT", ty::MQTT_UNSUBSCRIBE_RESULT as i64),
            ("PUBLISH", ty::MQTT_PUBLISH as i64),
            ("PUBLISH_RESULT", ty::MQTT_PUBLISH_RESULT as i64),
            ("MESSAGE", ty::MQTT_MESSAGE as i64),
            ("ACK", ty::MQTT_ACK as i64),
            ("LOST", ty::MQTT_LOST as i64),
            ("DISCONNECT", ty::MQTT_DISCONNECT as i64),
            ("DISCONNECT_RESULT", ty::MQTT_DISCONNECT_RESULT as i64),
            ("STATUS", ty::MQTT_STATUS as i64),
            ("COMPLETED", mqtt_state::COMPLETED as i64),
            ("INVALID_PARAMETERS", mqtt_state::INVALID_PARAMETERS as i64),
            ("ALREADY_CONNECTED", mqtt_state::ALREADY_CONNECTED as i64),
            ("NOT_CONNECTED", mqtt_state::NOT_CONNECTED as i64),
            ("NX_DOMAIN", mqtt_state::NX_DOMAIN as i64),
            ("UNKNOWN_CA", mqtt_state::UNKNOWN_CA as i64),
            ("CERTIFICATE_EXPIRED", mqtt_state::CERTIFICATE_EXPIRED as i64),
            ("SOCKET_ERROR", mqtt_state::SOCKET_ERROR as i64),
            ("RATE_LIMITED", mqtt_state::RATE_LIMITED as i64),
            ("DENIED", mqtt_state::DENIED as i64),
            ("SESSION_CONNECTED", mqtt_session::CONNECTED as i64),
            ("SESSION_RECONNECTING", mqtt_session::RECONNECTING as i64),
            ("SESSION_DOWN", mqtt_session::DOWN as i64),
            // Documented on Msg::MqttLost only (no Rust constants).
            ("LOST_TOO_LARGE", 1),
            ("LOST_RATE_LIMITED", 2),
            ("LOST_QUEUE_OVERFLOW", 3),
        ],
    );
    assert_eq!(c.get("KEEL_MSG_ERROR"), Some(&(ty::ERROR as i64)));
    assert_eq!(c.get("KEEL_MSG_HEADER_LEN"), Some(&(HEADER_LEN as i64)));
    assert_eq!(c.get("KEEL_MSG_MAX_HTTP_HEADERS"), Some(&(MAX_HTTP_HEADERS as i64)));
    assert_eq!(c.get("KEEL_MSG_MAX_CONFIG_KEYS"), Some(&(MAX_CONFIG_KEYS as i64)));
    assert_eq!(c.get("KEEL_MSG_MAX_MQTT_TOPICS"), Some(&(MAX_MQTT_TOPICS as i64)));
}
