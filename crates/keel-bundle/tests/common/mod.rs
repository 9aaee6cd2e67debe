//! Test helpers: an independent little CBOR writer (so hand-made manifests and envelopes do not
//! reuse the crate's encoder), app images, keys and a deterministic PRNG.
#![allow(dead_code)]

use ed25519_dalek::{Signer, SigningKey};
use keel_bundle::{key_id, LayerSpec, Target};
use sha2::{Digest, Sha256};

/// A CBOR value for hand-made test inputs.
#[derive(Clone, Debug)]
pub enum V {
    U(u64),
    N(i64),
    B(Vec<u8>),
    T(String),
    A(Vec<V>),
    M(Vec<(V, V)>),
    Tag(u64, Box<V>),
    Null,
    Bool(bool),
    /// Already encoded bytes, inserted verbatim.
    Raw(Vec<u8>),
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

impl V {
    pub fn enc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            V::U(n) => head(out, 0, *n),
            V::N(n) if *n >= 0 => head(out, 0, *n as u64),
            V::N(n) => head(out, 1, (-1 - *n) as u64),
            V::B(b) => {
                head(out, 2, b.len() as u64);
                out.extend(b);
            }
            V::T(t) => {
                head(out, 3, t.len() as u64);
                out.extend(t.as_bytes());
            }
            V::A(a) => {
                head(out, 4, a.len() as u64);
                a.iter().for_each(|v| v.write(out));
            }
            V::M(m) => {
                head(out, 5, m.len() as u64);
                for (k, v) in m {
                    k.write(out);
                    v.write(out);
                }
            }
            V::Tag(t, v) => {
                head(out, 6, *t);
                v.write(out);
            }
            V::Null => out.push(0xf6),
            V::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
            V::Raw(r) => out.extend(r),
        }
    }
}

/// `bstr .cbor v`.
pub fn bw(v: V) -> V {
    V::B(v.enc())
}

pub fn i(n: i64) -> V {
    V::N(n)
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn pubkey(k: &SigningKey) -> [u8; 32] {
    k.verifying_key().to_bytes()
}

/// A valid keel-image (header + image) of `image_len` bytes.
pub fn app_image(image_len: usize, seed: u8) -> Vec<u8> {
    let image: Vec<u8> = (0..image_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    let h = keel_image::build_header(&image, 0x0020_0000, 0x2800_0000, "hello", "1.2.3", (1, 0));
    let mut out = h.to_bytes().to_vec();
    out.extend(&image);
    out
}

pub fn app_layer(bytes: &[u8]) -> LayerSpec<'_> {
    LayerSpec { id: "app", target: Target::AppSlot, bytes }
}

/// One component's parameter map for a hand-made shared sequence.
pub fn params(layer: &[u8], target: u64) -> V {
    V::M(vec![
        (i(3), bw(V::A(vec![i(-16), V::B(sha256(layer).to_vec())]))),
        (i(14), V::U(layer.len() as u64)),
        (i(-256), V::U(target)),
    ])
}

/// A hand-made manifest with one "app" component for `layer`.
pub fn manifest_v(seq: u64, layer: &[u8]) -> V {
    let common = V::M(vec![
        (i(2), V::A(vec![V::A(vec![V::B(b"app".to_vec())])])),
        (i(4), bw(V::A(vec![V::U(12), V::U(0), V::U(20), params(layer, 1)]))),
    ]);
    V::M(vec![(i(1), V::U(1)), (i(2), V::U(seq)), (i(3), bw(common))])
}

/// How to wrap a manifest into an envelope by hand.
#[derive(Clone)]
pub struct Wrap {
    pub envelope_tag: bool,
    pub cose_tag: bool,
    pub kid: Option<Vec<u8>>,
    pub alg: i64,
    pub digest_alg: i64,
    /// Digest over the manifest bstr; `None` = the correct one.
    pub digest: Option<[u8; 32]>,
    pub extra: Vec<(V, V)>,
}

impl Default for Wrap {
    fn default() -> Self {
        Wrap { envelope_tag: true, cose_tag: true, kid: None, alg: -8, digest_alg: -16, digest: None, extra: vec![] }
    }
}

/// Builds a COSE_Sign1 over `payload` the way RFC 9052 says, independently of the crate.
pub fn sign1(payload: &[u8], key: &SigningKey, w: &Wrap) -> Vec<u8> {
    let protected = V::M(vec![(i(1), i(w.alg))]).enc();
    let tbs =
        V::A(vec![V::T("Signature1".into()), V::B(protected.clone()), V::B(vec![]), V::B(payload.to_vec())]).enc();
    let sig = key.sign(&tbs).to_bytes().to_vec();
    let kid = w.kid.clone().unwrap_or_else(|| key_id(&pubkey(key)).to_vec());
    let unprotected = if kid.is_empty() { V::M(vec![]) } else { V::M(vec![(i(4), V::B(kid))]) };
    let arr = V::A(vec![V::B(protected), unprotected, V::Null, V::B(sig)]);
    if w.cose_tag {
        V::Tag(18, Box::new(arr)).enc()
    } else {
        arr.enc()
    }
}

/// Signs `manifest` (encoded SUIT_Manifest) into an envelope.
pub fn wrap(manifest: &[u8], key: &SigningKey, w: &Wrap) -> Vec<u8> {
    let manifest_item = V::B(manifest.to_vec()).enc();
    let digest = w.digest.unwrap_or_else(|| sha256(&manifest_item));
    let digest_payload = V::A(vec![i(w.digest_alg), V::B(digest.to_vec())]).enc();
    let auth = V::A(vec![V::B(digest_payload.clone()), V::B(sign1(&digest_payload, key, w))]);
    let mut entries = vec![(i(2), bw(auth)), (i(3), V::Raw(manifest_item))];
    entries.extend(w.extra.iter().cloned());
    let env = V::M(entries);
    if w.envelope_tag {
        V::Tag(107, Box::new(env)).enc()
    } else {
        env.enc()
    }
}

/// xorshift64*: a small deterministic PRNG for the fuzz loops.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
