//! The SUIT envelope: authentication wrapper (SUIT_Digest + COSE_Sign1), manifest and
//! integrated payloads; signature verification.

use ed25519_dalek::{Signature, VerifyingKey};
use minicbor::encode::write::Cursor;
use minicbor::Encoder;

use crate::cbor::{Key, Reader, Seen};
use crate::manifest::{decode_digest, valid_component_id};
use crate::wire::*;
use crate::{key_id, sha256, Component, Error, Manifest, PublicKey, MAX_BUNDLE_SIZE, MAX_COMPONENTS};

/// An integrated payload of the envelope: the bytes of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The component id (the envelope key without its leading `#`).
    pub id: &'a str,
    /// The layer bytes.
    pub bytes: &'a [u8],
}

/// A parsed, not yet verified envelope. It borrows from the input bytes.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    /// The encoded `suit-authentication-wrapper` bstr item, head included.
    pub(crate) auth_raw: &'a [u8],
    /// The encoded `suit-manifest` bstr item, head included: what SUIT_Digest covers.
    pub(crate) manifest_raw: &'a [u8],
    /// The contents of the `suit-manifest` bstr.
    manifest: &'a [u8],
    /// The encoded SUIT_Digest: the COSE_Sign1 detached payload.
    digest_payload: &'a [u8],
    claimed_digest: [u8; 32],
    protected: &'a [u8],
    kid: Option<&'a [u8]>,
    signature: [u8; 64],
    payloads: [Payload<'a>; MAX_COMPONENTS],
    payload_count: usize,
}

/// Parses `envelope`, checks the manifest digest, verifies the signature against
/// `trusted_keys`, decodes the manifest and checks that every layer fits the region
/// `region_capacity` gives for it. This is the device's entry point.
///
/// The envelope may carry integrated payloads or not; they are not checked here (the device
/// checks each layer against [`Component::digest`] when it downloads it).
pub fn verify_envelope<'a>(
    envelope: &'a [u8],
    trusted_keys: &[PublicKey],
    region_capacity: impl Fn(&Component<'_>) -> Option<u32>,
) -> Result<Manifest<'a>, Error> {
    let manifest = Envelope::parse(envelope)?.verify(trusted_keys)?;
    manifest.check_regions(region_capacity)?;
    Ok(manifest)
}

impl<'a> Envelope<'a> {
    /// Parses the envelope structure, the authentication wrapper and the COSE_Sign1 headers.
    /// Nothing is verified yet and the manifest is not decoded.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        const WHAT: &str = "SUIT_Envelope";
        if bytes.len() > MAX_BUNDLE_SIZE {
            return Err(Error::TooLarge);
        }
        let mut r = Reader::new(bytes);
        r.optional_tag(TAG_ENVELOPE, "SUIT_Envelope tag")?;
        let n = r.map(WHAT)?;
        let mut auth: Option<&[u8]> = None;
        let mut env = Envelope {
            auth_raw: &[],
            manifest_raw: &[],
            manifest: &[],
            digest_payload: &[],
            claimed_digest: [0; 32],
            protected: &[],
            kid: None,
            signature: [0; 64],
            payloads: [Payload { id: "", bytes: &[] }; MAX_COMPONENTS],
            payload_count: 0,
        };
        let mut seen = Seen::new();
        for _ in 0..n {
            match r.key(WHAT)? {
                Key::Int(ENV_AUTHENTICATION_WRAPPER) => {
                    seen.mark(1, "suit-authentication-wrapper")?;
                    let (content, raw) = r.bytes_with_raw("suit-authentication-wrapper")?;
                    auth = Some(content);
                    env.auth_raw = raw;
                }
                Key::Int(ENV_MANIFEST) => {
                    seen.mark(2, "suit-manifest")?;
                    let (content, raw) = r.bytes_with_raw("suit-manifest")?;
                    env.manifest = content;
                    env.manifest_raw = raw;
                }
                Key::Text(key) => {
                    let id = key
                        .strip_prefix(PAYLOAD_KEY_PREFIX)
                        .filter(|id| valid_component_id(id))
                        .ok_or(Error::InvalidValue("integrated payload key"))?;
                    if env.payloads().iter().any(|p| p.id == id) {
                        return Err(Error::DuplicateField("integrated payload"));
                    }
                    let bytes = r.bytes("integrated payload")?;
                    let slot = env.payloads.get_mut(env.payload_count).ok_or(Error::TooManyComponents)?;
                    *slot = Payload { id, bytes };
                    env.payload_count += 1;
                }
                Key::Int(_) => return Err(Error::Unsupported("SUIT_Envelope member")),
            }
        }
        r.end(WHAT)?;
        let auth = auth.ok_or(Error::MissingField("suit-authentication-wrapper"))?;
        if !seen.has(2) {
            return Err(Error::MissingField("suit-manifest"));
        }
        env.parse_authentication(auth)?;
        Ok(env)
    }

    fn parse_authentication(&mut self, auth: &'a [u8]) -> Result<(), Error> {
        const WHAT: &str = "SUIT_Authentication";
        let mut r = Reader::new(auth);
        match r.array(WHAT)? {
            2 => {}
            0 => return Err(Error::MissingField("SUIT_Digest")),
            1 => return Err(Error::MissingField("COSE_Sign1")),
            _ => return Err(Error::Unsupported("more than one authentication block")),
        }
        self.digest_payload = r.bytes("SUIT_Digest")?;
        self.claimed_digest = decode_digest(self.digest_payload)?;
        let sign1 = r.bytes("COSE_Sign1")?;
        r.end(WHAT)?;
        self.parse_sign1(sign1)
    }

    fn parse_sign1(&mut self, sign1: &'a [u8]) -> Result<(), Error> {
        const WHAT: &str = "COSE_Sign1";
        let mut r = Reader::new(sign1);
        r.optional_tag(TAG_COSE_SIGN1, "COSE_Sign1 tag (must be 18)")?;
        if r.array(WHAT)? != 4 {
            return Err(Error::Malformed(WHAT));
        }
        self.protected = r.bytes("COSE protected header")?;
        check_protected(self.protected)?;
        let n = r.map("COSE unprotected header")?;
        let mut seen = Seen::new();
        for _ in 0..n {
            match r.key("COSE unprotected header")? {
                Key::Int(COSE_HEADER_KID) => {
                    seen.mark(1, "kid")?;
                    self.kid = Some(r.bytes("kid")?);
                }
                _ => return Err(Error::Unsupported("COSE unprotected header parameter")),
            }
        }
        r.null("COSE_Sign1 payload (must be detached: nil)")?;
        self.signature = r.byte_array("COSE_Sign1 signature")?;
        r.end(WHAT)
    }

    /// The manifest digest the authentication wrapper claims (SHA-256 over the encoded
    /// `suit-manifest` bstr). Equal to the real one once [`Envelope::check_manifest_digest`]
    /// passed.
    pub fn manifest_digest(&self) -> [u8; 32] {
        self.claimed_digest
    }

    /// The key id in the COSE_Sign1 unprotected header, if any (see [`crate::key_id`]).
    pub fn kid(&self) -> Option<&'a [u8]> {
        self.kid
    }

    /// The integrated payloads (layers) the envelope carries, in envelope order.
    pub fn payloads(&self) -> &[Payload<'a>] {
        self.payloads.get(..self.payload_count).unwrap_or(&[])
    }

    /// Checks that the SUIT_Digest matches the manifest.
    pub fn check_manifest_digest(&self) -> Result<(), Error> {
        if sha256(self.manifest_raw) == self.claimed_digest {
            Ok(())
        } else {
            Err(Error::ManifestDigestMismatch)
        }
    }

    /// Verifies the COSE_Sign1 with Ed25519 `verify_strict` and returns the index of the
    /// trusted key that signed. With a `kid`, only the trusted keys with that key id are tried
    /// (none: [`Error::UnknownSigner`]); without, every trusted key is.
    ///
    /// This checks only the signature over the SUIT_Digest; [`Envelope::verify`] also checks
    /// the digest against the manifest.
    pub fn verify_signature(&self, trusted_keys: &[PublicKey]) -> Result<usize, Error> {
        let mut buf = [0u8; 128];
        let msg = sig_structure(&mut buf, self.protected, self.digest_payload)?;
        let sig = Signature::from_bytes(&self.signature);
        let mut candidates = 0;
        for (i, key) in trusted_keys.iter().enumerate() {
            if let Some(kid) = self.kid {
                if key_id(key)[..] != *kid {
                    continue;
                }
            }
            candidates += 1;
            let ok = VerifyingKey::from_bytes(key).is_ok_and(|vk| vk.verify_strict(msg, &sig).is_ok());
            if ok {
                return Ok(i);
            }
        }
        if candidates == 0 {
            Err(Error::UnknownSigner)
        } else {
            Err(Error::BadSignature)
        }
    }

    /// Checks the manifest digest, verifies the signature and decodes the manifest.
    pub fn verify(&self, trusted_keys: &[PublicKey]) -> Result<Manifest<'a>, Error> {
        self.check_manifest_digest()?;
        self.verify_signature(trusted_keys)?;
        Manifest::decode(self.manifest)
    }

    /// Checks the manifest digest and decodes the manifest **without verifying the signature**
    /// (for tools that show a bundle, and for the server before it knows the signer).
    pub fn manifest_unverified(&self) -> Result<Manifest<'a>, Error> {
        self.check_manifest_digest()?;
        Manifest::decode(self.manifest)
    }
}

/// Checks the protected header: exactly `{1: -8}` (any integer encoding).
fn check_protected(protected: &[u8]) -> Result<(), Error> {
    const WHAT: &str = "COSE protected header";
    let mut r = Reader::new(protected);
    let n = r.map(WHAT)?;
    let mut alg = None;
    for _ in 0..n {
        match r.key(WHAT)? {
            Key::Int(COSE_HEADER_ALG) if alg.is_none() => alg = Some(r.int("COSE alg")?),
            Key::Int(COSE_HEADER_ALG) => return Err(Error::DuplicateField("COSE alg")),
            _ => return Err(Error::Unsupported("COSE protected header parameter")),
        }
    }
    r.end(WHAT)?;
    match alg {
        Some(ALG_EDDSA) => Ok(()),
        Some(_) => Err(Error::UnsupportedSignatureAlgorithm),
        None => Err(Error::MissingField("COSE alg")),
    }
}

/// Writes the RFC 9052 `Sig_structure` for COSE_Sign1 with empty external AAD into `buf`:
/// `["Signature1", protected, h'', payload]`.
pub(crate) fn sig_structure<'b>(buf: &'b mut [u8], protected: &[u8], payload: &[u8]) -> Result<&'b [u8], Error> {
    let mut e = Encoder::new(Cursor::new(&mut *buf));
    let written = e
        .array(4)
        .and_then(|e| e.str(SIG_CONTEXT_SIGN1))
        .and_then(|e| e.bytes(protected))
        .and_then(|e| e.bytes(&[]))
        .and_then(|e| e.bytes(payload))
        .is_ok();
    let len = e.into_writer().position();
    if !written {
        return Err(Error::Unsupported("COSE headers too long"));
    }
    buf.get(..len).ok_or(Error::Unsupported("COSE headers too long"))
}
