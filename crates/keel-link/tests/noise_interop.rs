//! The device's Noise implementation (clatter, no_std) and the server's (snow) interoperate on
//! the pattern Keel uses: `Noise_IK_25519_ChaChaPoly_SHA256`. The device knows the server's
//! static key (pinned in its factory data); the server learns the device's from the first
//! message and checks it against its registry.

use clatter::bytearray::ByteArray;
use clatter::crypto::cipher::ChaChaPoly;
use clatter::crypto::dh::X25519;
use clatter::crypto::hash::Sha256;
use clatter::handshakepattern::noise_ik;
use clatter::traits::{Dh, Handshaker};
use clatter::transportstate::TransportState;
use clatter::{KeyPair, NqHandshakeCore};
use rand_core::OsRng;

const PARAMS: &str = "Noise_IK_25519_ChaChaPoly_SHA256";
const PROLOGUE: &[u8] = b"keel/1";

type Device = NqHandshakeCore<X25519, ChaChaPoly, Sha256, OsRng>;

fn device_keypair(secret: [u8; 32]) -> KeyPair<[u8; 32], <X25519 as Dh>::PrivateKey> {
    let secret = <X25519 as Dh>::PrivateKey::from_slice(&secret);
    KeyPair { public: X25519::pubkey(&secret), secret }
}

struct Pair {
    device: TransportState<ChaChaPoly, Sha256>,
    server: snow::TransportState,
}

fn handshake() -> Pair {
    let server_keys = snow::Builder::new(PARAMS.parse().unwrap()).generate_keypair().unwrap();
    let device_keys = device_keypair([7u8; 32]);
    let device_public = device_keys.public;
    let server_public: [u8; 32] = server_keys.public.clone().try_into().unwrap();

    let mut device =
        Device::new(noise_ik(), PROLOGUE, true, Some(device_keys), None, Some(server_public), None).unwrap();
    let mut server = snow::Builder::new(PARAMS.parse().unwrap())
        .prologue(PROLOGUE)
        .unwrap()
        .local_private_key(&server_keys.private)
        .unwrap()
        .build_responder()
        .unwrap();

    let mut wire = [0u8; 1024];
    let mut payload = [0u8; 1024];
    // -> e, es, s, ss   (with a hello payload, already encrypted)
    let n = device.write_message(b"hello from the device", &mut wire).unwrap();
    let m = server.read_message(&wire[..n], &mut payload).unwrap();
    assert_eq!(&payload[..m], b"hello from the device");
    assert_eq!(server.get_remote_static().unwrap(), &device_public[..], "server learns the device key");
    // <- e, ee, se
    let n = server.write_message(b"welcome", &mut wire).unwrap();
    let m = device.read_message(&wire[..n], &mut payload).unwrap();
    assert_eq!(&payload[..m], b"welcome");
    assert!(device.is_finished() && server.is_handshake_finished());
    Pair { device: device.finalize().unwrap(), server: server.into_transport_mode().unwrap() }
}

#[test]
fn ik_handshake_and_transport_both_ways() {
    let mut p = handshake();
    let mut wire = [0u8; 1024];
    let mut out = [0u8; 1024];
    for i in 0..50u8 {
        let msg = [i; 100];
        let n = p.device.send(&msg, &mut wire).unwrap();
        let m = p.server.read_message(&wire[..n], &mut out).unwrap();
        assert_eq!(&out[..m], &msg[..]);
        let n = p.server.write_message(&msg[..i as usize], &mut wire).unwrap();
        let m = p.device.receive(&wire[..n], &mut out).unwrap();
        assert_eq!(&out[..m], &msg[..i as usize]);
    }
}

#[test]
fn rekeying_interoperates() {
    let mut p = handshake();
    let mut wire = [0u8; 256];
    let mut out = [0u8; 256];
    p.device.rekey_sender().unwrap();
    p.server.rekey_incoming();
    let n = p.device.send(b"after rekey", &mut wire).unwrap();
    let m = p.server.read_message(&wire[..n], &mut out).unwrap();
    assert_eq!(&out[..m], b"after rekey");
    p.server.rekey_outgoing();
    p.device.rekey_receiver().unwrap();
    let n = p.server.write_message(b"and back", &mut wire).unwrap();
    let m = p.device.receive(&wire[..n], &mut out).unwrap();
    assert_eq!(&out[..m], b"and back");
}

#[test]
fn tampered_or_replayed_messages_are_rejected() {
    let mut p = handshake();
    let mut wire = [0u8; 256];
    let mut out = [0u8; 256];
    let n = p.device.send(b"log line 1", &mut wire).unwrap();
    let mut bad = wire;
    bad[3] ^= 1;
    assert!(p.server.read_message(&bad[..n], &mut out).is_err(), "tampered");
    // snow does not advance its nonce on failure, so the genuine message still decrypts once...
    assert!(p.server.read_message(&wire[..n], &mut out).is_ok());
    // ...and a replay of it does not.
    assert!(p.server.read_message(&wire[..n], &mut out).is_err(), "replayed");
}

#[test]
fn a_device_pinning_the_wrong_server_key_cannot_connect() {
    let server_keys = snow::Builder::new(PARAMS.parse().unwrap()).generate_keypair().unwrap();
    let impostor: [u8; 32] =
        snow::Builder::new(PARAMS.parse().unwrap()).generate_keypair().unwrap().public.try_into().unwrap();
    let mut device =
        Device::new(noise_ik(), PROLOGUE, true, Some(device_keypair([9u8; 32])), None, Some(impostor), None).unwrap();
    let mut server = snow::Builder::new(PARAMS.parse().unwrap())
        .prologue(PROLOGUE)
        .unwrap()
        .local_private_key(&server_keys.private)
        .unwrap()
        .build_responder()
        .unwrap();
    let mut wire = [0u8; 512];
    let mut out = [0u8; 512];
    let n = device.write_message(b"hello", &mut wire).unwrap();
    assert!(server.read_message(&wire[..n], &mut out).is_err());
}
