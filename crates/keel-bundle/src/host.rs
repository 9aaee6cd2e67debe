//! Host side (feature `std`): build and sign bundles, split them into envelope and layers,
//! join them again, and handle signing keys.
//!
//! Key files (see `docs/bundle-format.md`): the secret key is PKCS#8 PEM
//! (`-----BEGIN PRIVATE KEY-----`, what `openssl genpkey -algorithm ed25519` writes) and the
//! public key SPKI PEM (`-----BEGIN PUBLIC KEY-----`, `openssl pkey -pubout`) or 64 hex digits.

use core::convert::Infallible;
use std::string::String;
use std::vec::Vec;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes};
use ed25519_dalek::Signer;
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use minicbor::Encoder;

use crate::envelope::sig_structure;
use crate::manifest::valid_component_id;
use crate::wire::*;
use crate::{
    key_id, sha256, Component, Envelope, Error, Manifest, Policies, PublicKey, Target, MAX_BUNDLE_SIZE, MAX_COMPONENTS,
};

/// One layer to put into a bundle.
#[derive(Clone, Copy, Debug)]
pub struct LayerSpec<'a> {
    /// Component id, e.g. `"app"` (see [`Component::id`]).
    pub id: &'a str,
    /// Where the layer goes. For [`Target::AppSlot`] the bytes must be a keel-image: the
    /// 256-byte header followed by the image, exactly as written to an app slot.
    pub target: Target,
    /// The layer bytes.
    pub bytes: &'a [u8],
}

/// Everything a bundle holds besides the signature.
#[derive(Clone, Copy, Debug)]
pub struct BundleSpec<'a> {
    /// suit-manifest-sequence-number; must grow with every bundle for the same devices.
    pub sequence: u64,
    /// 1..=[`MAX_COMPONENTS`] layers with distinct ids.
    pub layers: &'a [LayerSpec<'a>],
    /// The Keel policies.
    pub policies: Policies<'a>,
}

/// A layer taken out of a bundle; its digest has been checked against the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Component id.
    pub id: String,
    /// Where the layer goes.
    pub target: Target,
    /// SHA-256 of `bytes` (the address to store it under).
    pub digest: [u8; 32],
    /// The layer bytes.
    pub bytes: Vec<u8>,
}

/// A bundle split into the envelope without integrated payloads (what a device downloads
/// first) and its layers (in manifest order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitBundle {
    /// The envelope without payloads: `107({2: auth, 3: manifest})`, the signed parts copied
    /// verbatim.
    pub envelope: Vec<u8>,
    /// The layers, in manifest order.
    pub layers: Vec<Layer>,
}

impl SplitBundle {
    /// The manifest, digest checked but **signature not verified**.
    pub fn manifest(&self) -> Result<Manifest<'_>, Error> {
        Envelope::parse(&self.envelope)?.manifest_unverified()
    }

    /// The manifest, after verifying the signature against `trusted_keys`.
    pub fn verify(&self, trusted_keys: &[PublicKey]) -> Result<Manifest<'_>, Error> {
        Envelope::parse(&self.envelope)?.verify(trusted_keys)
    }

    /// The bundle again: the envelope with every layer as integrated payload.
    pub fn to_bundle(&self) -> Result<Vec<u8>, Error> {
        let layers: Vec<&[u8]> = self.layers.iter().map(|l| l.bytes.as_slice()).collect();
        join_bundle(&self.envelope, &layers)
    }
}

type EncResult = Result<(), minicbor::encode::Error<Infallible>>;

/// Runs `f` on a fresh encoder and returns the bytes.
fn encode(f: impl FnOnce(&mut Encoder<Vec<u8>>) -> EncResult) -> Result<Vec<u8>, Error> {
    let mut e = Encoder::new(Vec::new());
    f(&mut e).map_err(|_| Error::Malformed("CBOR encoding"))?;
    Ok(e.into_writer())
}

/// Encodes `[-16, bstr digest]`.
fn encode_digest(digest: &[u8; 32]) -> Result<Vec<u8>, Error> {
    encode(|e| e.array(2)?.i64(ALG_SHA256)?.bytes(digest)?.ok())
}

/// Encodes the SUIT_Manifest (the contents of the `suit-manifest` bstr).
fn encode_manifest(sequence: u64, components: &[Component<'_>], p: &Policies<'_>) -> Result<Vec<u8>, Error> {
    let n = components.len() as u64;
    let mut digests = Vec::new();
    for c in components {
        digests.push(encode_digest(&c.digest)?);
    }
    let shared = encode(|e| {
        e.array(4 * n)?;
        for (i, (c, d)) in components.iter().zip(&digests).enumerate() {
            e.u64(DIRECTIVE_SET_COMPONENT_INDEX)?.u64(i as u64)?;
            e.u64(DIRECTIVE_OVERRIDE_PARAMETERS)?.map(3)?;
            e.i64(PARAM_IMAGE_DIGEST)?.bytes(d)?;
            e.i64(PARAM_IMAGE_SIZE)?.u32(c.size)?;
            e.i64(PARAM_KEEL_TARGET)?.u64(c.target.to_wire())?;
        }
        Ok(())
    })?;
    let common = encode(|e| {
        e.map(2)?.i64(COMMON_COMPONENTS)?.array(n)?;
        for c in components {
            e.array(1)?.bytes(c.id.as_bytes())?;
        }
        e.i64(COMMON_SHARED_SEQUENCE)?.bytes(&shared)?.ok()
    })?;
    encode(|e| {
        e.map(4)?;
        e.i64(MANIFEST_VERSION)?.u64(1)?;
        e.i64(MANIFEST_SEQUENCE_NUMBER)?.u64(sequence)?;
        e.i64(MANIFEST_COMMON)?.bytes(&common)?;
        e.i64(MANIFEST_KEEL_POLICIES)?.map(6 + u64::from(p.debug_key.is_some()))?;
        e.i64(POLICY_APP_NAME)?.str(p.app_name)?;
        e.i64(POLICY_APP_VERSION)?.str(p.app_version)?;
        e.i64(POLICY_MIN_VISOR_VERSION)?.u32(p.min_visor_version)?;
        if let Some(k) = &p.debug_key {
            e.i64(POLICY_DEBUG_KEY)?.bytes(k)?;
        }
        e.i64(POLICY_MAX_TRIAL_CRASHES)?.u8(p.max_trial_crashes)?;
        e.i64(POLICY_MAX_POLITENESS_TIME)?.u32(p.max_politeness_time_s)?;
        e.i64(POLICY_CONNECTIVITY_GRACE_TIME)?.u32(p.connectivity_grace_time_s)?.ok()
    })
}

/// Checks that an app-slot layer is a keel-image whose size and digest are consistent.
fn check_app_image(bytes: &[u8]) -> Result<(), Error> {
    use keel_image::{ImageHasher, HASHED_LEN, HEADER_SIZE, MAGIC};
    let (header, image) = bytes.split_at_checked(HEADER_SIZE).ok_or(Error::BadAppImage)?;
    let header: &[u8; HEADER_SIZE] = header.try_into().map_err(|_| Error::BadAppImage)?;
    let word = |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
    if word(0) != MAGIC || word(8) as usize != image.len() {
        return Err(Error::BadAppImage);
    }
    let mut h = ImageHasher::new(header);
    h.update(image);
    if h.finish()[..] != header[HASHED_LEN..HASHED_LEN + 32] {
        return Err(Error::BadAppImage);
    }
    Ok(())
}

/// Builds and signs a bundle: the envelope with every layer as integrated payload `"#id"`.
///
/// Checks the layers (ids, sizes, `region_capacity`, app images), the policies and the 64 MiB
/// limit. The COSE_Sign1 carries the signer's [`key_id`] as `kid`.
pub fn build_bundle(
    spec: &BundleSpec<'_>,
    signing_key: &SigningKey,
    region_capacity: impl Fn(&Component<'_>) -> Option<u32>,
) -> Result<Vec<u8>, Error> {
    if spec.layers.is_empty() {
        return Err(Error::MissingField("layers"));
    }
    if spec.layers.len() > MAX_COMPONENTS {
        return Err(Error::TooManyComponents);
    }
    spec.policies.validate()?;
    let mut components: Vec<Component<'_>> = Vec::new();
    let mut total = 0usize;
    for l in spec.layers {
        if !valid_component_id(l.id) {
            return Err(Error::InvalidValue("component id"));
        }
        if components.iter().any(|c| c.id == l.id) {
            return Err(Error::InvalidValue("duplicate component id"));
        }
        if l.bytes.is_empty() {
            return Err(Error::InvalidValue("empty layer"));
        }
        total = total.saturating_add(l.bytes.len());
        if total > MAX_BUNDLE_SIZE {
            return Err(Error::TooLarge);
        }
        let c = Component { id: l.id, target: l.target, size: l.bytes.len() as u32, digest: sha256(l.bytes) };
        c.check_fits(&region_capacity)?;
        if l.target == Target::AppSlot {
            check_app_image(l.bytes)?;
        }
        components.push(c);
    }

    let manifest = encode_manifest(spec.sequence, &components, &spec.policies)?;
    let manifest_item = encode(|e| e.bytes(&manifest)?.ok())?;
    let digest_payload = encode_digest(&sha256(&manifest_item))?;
    let protected = encode(|e| e.map(1)?.i64(COSE_HEADER_ALG)?.i64(ALG_EDDSA)?.ok())?;
    let mut buf = [0u8; 128];
    let signature = signing_key.sign(sig_structure(&mut buf, &protected, &digest_payload)?).to_bytes();
    let kid = key_id(&signing_key.verifying_key().to_bytes());
    let sign1 = encode(|e| {
        e.tag(minicbor::data::Tag::new(TAG_COSE_SIGN1))?.array(4)?;
        e.bytes(&protected)?.map(1)?.i64(COSE_HEADER_KID)?.bytes(&kid)?;
        e.null()?.bytes(&signature)?.ok()
    })?;
    let auth = encode(|e| e.array(2)?.bytes(&digest_payload)?.bytes(&sign1)?.ok())?;
    let auth_item = encode(|e| e.bytes(&auth)?.ok())?;
    let payloads: Vec<(&str, &[u8])> = spec.layers.iter().map(|l| (l.id, l.bytes)).collect();
    assemble(&auth_item, &manifest_item, &payloads)
}

/// Writes `107({2: auth, 3: manifest, "#id": layer, ...})` from already encoded bstr items.
/// Payload keys are sorted as deterministic CBOR sorts them (shorter first, then bytewise).
fn assemble(auth_item: &[u8], manifest_item: &[u8], payloads: &[(&str, &[u8])]) -> Result<Vec<u8>, Error> {
    let mut sorted = payloads.to_vec();
    sorted.sort_by(|a, b| (a.0.len(), a.0).cmp(&(b.0.len(), b.0)));
    let mut e = Encoder::new(Vec::new());
    let r: EncResult = (|| {
        e.tag(minicbor::data::Tag::new(TAG_ENVELOPE))?.map(2 + sorted.len() as u64)?;
        e.i64(ENV_AUTHENTICATION_WRAPPER)?;
        e.writer_mut().extend_from_slice(auth_item);
        e.i64(ENV_MANIFEST)?;
        e.writer_mut().extend_from_slice(manifest_item);
        for (id, bytes) in &sorted {
            e.str_len(1 + id.len() as u64)?;
            e.writer_mut().push(b'#');
            e.writer_mut().extend_from_slice(id.as_bytes());
            e.bytes(bytes)?;
        }
        Ok(())
    })();
    r.map_err(|_| Error::Malformed("CBOR encoding"))?;
    let out = e.into_writer();
    if out.len() > MAX_BUNDLE_SIZE {
        return Err(Error::TooLarge);
    }
    Ok(out)
}

/// The envelope without integrated payloads: the signed items of `env` copied verbatim.
pub fn encode_envelope(env: &Envelope<'_>) -> Result<Vec<u8>, Error> {
    assemble(env.auth_raw, env.manifest_raw, &[])
}

/// Splits a bundle into the envelope without payloads and its layers, checking that every
/// component has exactly one payload whose size and SHA-256 match the manifest, and that no
/// payload is left over. The manifest digest is checked; the **signature is not** (use
/// [`SplitBundle::verify`]).
pub fn split_bundle(bundle: &[u8]) -> Result<SplitBundle, Error> {
    let env = Envelope::parse(bundle)?;
    let manifest = env.manifest_unverified()?;
    if env.payloads().iter().any(|p| manifest.component(p.id).is_none()) {
        return Err(Error::UnexpectedLayer);
    }
    let mut layers = Vec::new();
    for c in manifest.components() {
        let p = env.payloads().iter().find(|p| p.id == c.id).ok_or(Error::MissingLayer)?;
        c.verify_layer(p.bytes)?;
        layers.push(Layer { id: c.id.into(), target: c.target, digest: c.digest, bytes: p.bytes.to_vec() });
    }
    Ok(SplitBundle { envelope: encode_envelope(&env)?, layers })
}

/// Puts layers (in any order, matched to components by SHA-256) back into an envelope. Any
/// payloads `envelope` already carries are dropped. Every component needs exactly one layer.
pub fn join_bundle(envelope: &[u8], layers: &[&[u8]]) -> Result<Vec<u8>, Error> {
    let env = Envelope::parse(envelope)?;
    let manifest = env.manifest_unverified()?;
    let digests: Vec<[u8; 32]> = layers.iter().map(|l| sha256(l)).collect();
    let mut used = std::vec![false; layers.len()];
    let mut payloads = Vec::new();
    for c in manifest.components() {
        let i = (0..layers.len()).find(|&i| !used[i] && digests[i] == c.digest).ok_or(Error::MissingLayer)?;
        c.verify_layer(layers[i])?;
        used[i] = true;
        payloads.push((c.id, layers[i]));
    }
    if used.iter().any(|u| !u) {
        return Err(Error::UnexpectedLayer);
    }
    assemble(env.auth_raw, env.manifest_raw, &payloads)
}

/// A new random signing key from the operating system's generator.
pub fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// The secret key as PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`), as OpenSSL writes it.
/// The returned string is wiped from memory when dropped.
pub fn secret_key_to_pem(key: &SigningKey) -> Result<zeroize::Zeroizing<String>, Error> {
    KeypairBytes { secret_key: key.to_bytes(), public_key: None }
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| Error::BadKey("PKCS#8 encoding"))
}

/// Reads a PKCS#8 PEM Ed25519 secret key (v1 or v2; with a public key it must match).
pub fn secret_key_from_pem(pem: &str) -> Result<SigningKey, Error> {
    SigningKey::from_pkcs8_pem(pem.trim()).map_err(|_| Error::BadKey("not a PKCS#8 PEM Ed25519 private key"))
}

/// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
pub fn public_key_to_pem(key: &VerifyingKey) -> Result<String, Error> {
    key.to_public_key_pem(LineEnding::LF).map_err(|_| Error::BadKey("SPKI encoding"))
}

/// Reads a public key given as SPKI PEM or as 64 hex digits; it must be a valid Ed25519 point.
pub fn public_key_from_text(text: &str) -> Result<PublicKey, Error> {
    let text = text.trim();
    let bytes = if text.starts_with("-----BEGIN") {
        VerifyingKey::from_public_key_pem(text)
            .map_err(|_| Error::BadKey("not an SPKI PEM Ed25519 public key"))?
            .to_bytes()
    } else {
        let b = text.as_bytes();
        if b.len() != 64 {
            return Err(Error::BadKey("expected 64 hex digits or a PEM public key"));
        }
        let mut key = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let s = core::str::from_utf8(pair).map_err(|_| Error::BadKey("not hex"))?;
            key[i] = u8::from_str_radix(s, 16).map_err(|_| Error::BadKey("not hex"))?;
        }
        key
    };
    VerifyingKey::from_bytes(&bytes).map_err(|_| Error::BadKey("not a valid Ed25519 public key"))?;
    Ok(bytes)
}

/// Writes a new secret key file (PKCS#8 PEM). Refuses to overwrite an existing file; on Unix
/// the file is created with mode 0600.
pub fn write_secret_key_file(path: &std::path::Path, key: &SigningKey) -> std::io::Result<()> {
    use std::io::Write;
    let pem = secret_key_to_pem(key).map_err(|e| std::io::Error::other(std::format!("{e}")))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()
}

/// Reads a secret key file written by [`write_secret_key_file`] (or by OpenSSL).
pub fn read_secret_key_file(path: &std::path::Path) -> std::io::Result<SigningKey> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
    secret_key_from_pem(&text)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, std::format!("{}: {e}", path.display())))
}
