//! # Keel update bundles
//!
//! A bundle is one signed update: a manifest that names one or more **layers** (flash images, one
//! per component such as `"app"`) and the policies the visor applies to the update, plus the layer
//! bytes. The format is a strict subset of the IETF SUIT manifest (draft-ietf-suit-manifest),
//! encoded in CBOR:
//!
//! ```text
//! SUIT_Envelope (tag 107, optional) = {
//!   2: bstr .cbor [ bstr .cbor SUIT_Digest, bstr .cbor COSE_Sign1 ],  ; authentication wrapper
//!   3: bstr .cbor SUIT_Manifest,                                      ; the signed manifest
//!   "#app": bstr, ...                                                 ; integrated payloads (layers)
//! }
//! SUIT_Digest = [-16 (SHA-256), sha256(manifest bstr)]
//! COSE_Sign1  = 18([ << {1: -8 (EdDSA)} >>, {? 4: kid}, nil, ed25519 signature ])
//! ```
//!
//! The Ed25519 signature covers the manifest digest; the manifest holds the SHA-256 and size of
//! every layer, so one signature covers everything. A server stores the envelope without its
//! integrated payloads and the layers by digest; the device downloads the small envelope,
//! verifies it with [`verify_envelope`] and then fetches each layer by its digest.
//!
//! The full wire format, every Keel extension and every deviation from SUIT are documented in
//! `docs/bundle-format.md`.
//!
//! ## Two sides
//!
//! * **Device** (`no_std`, no `alloc`, `default-features = false`): [`verify_envelope`] (or
//!   [`Envelope::parse`] + [`Envelope::verify`]) parses the envelope, checks the manifest digest,
//!   verifies the COSE_Sign1 with `verify_strict` against trusted keys and returns a borrowing
//!   [`Manifest`]. Counts are bounded ([`MAX_COMPONENTS`]); malformed input of any kind yields an
//!   [`Error`], never a panic.
//! * **Host** (feature `std`, on by default): build and sign bundles ([`build_bundle`]), split
//!   them into envelope and layers and check the layers ([`split_bundle`], [`join_bundle`]),
//!   generate signing keys ([`generate_signing_key`]) and read and write key files (PKCS#8 /
//!   SPKI PEM, as OpenSSL writes them).
#![no_std]

#[cfg(feature = "std")]
extern crate std;

mod cbor;
mod envelope;
mod manifest;
pub mod wire;

#[cfg(feature = "std")]
mod host;

pub use envelope::{verify_envelope, Envelope, Payload};
#[cfg(feature = "std")]
pub use host::{
    build_bundle, encode_envelope, generate_signing_key, join_bundle, public_key_from_text, public_key_to_pem,
    read_secret_key_file, secret_key_from_pem, secret_key_to_pem, split_bundle, write_secret_key_file, BundleSpec,
    Layer, LayerSpec, SigningKey, SplitBundle, VerifyingKey,
};
pub use manifest::{Component, Manifest, Policies};

use sha2::{Digest, Sha256};

/// Largest bundle (envelope plus every layer) in bytes: 64 MiB.
pub const MAX_BUNDLE_SIZE: usize = 64 * 1024 * 1024;
/// Largest number of components (layers) in one manifest.
pub const MAX_COMPONENTS: usize = 4;
/// Longest component id in bytes (`[a-z0-9-]`, starting with a letter).
pub const MAX_COMPONENT_ID_LEN: usize = 16;
/// Longest app name or version string in bytes (fits the 32-byte NUL-padded image header fields).
pub const MAX_TEXT_LEN: usize = 31;
/// Length of a key id: the first 8 bytes of SHA-256 over the 32-byte Ed25519 public key.
pub const KEY_ID_LEN: usize = 8;

/// Default of [`Policies::max_trial_crashes`].
pub const DEFAULT_MAX_TRIAL_CRASHES: u8 = 3;
/// Default of [`Policies::max_politeness_time_s`]: install without waiting for the app.
pub const DEFAULT_MAX_POLITENESS_TIME_S: u32 = 0;
/// Default of [`Policies::connectivity_grace_time_s`].
pub const DEFAULT_CONNECTIVITY_GRACE_TIME_S: u32 = 60;

/// An Ed25519 public key (32 bytes, as in RFC 8032).
pub type PublicKey = [u8; 32];

/// What a layer is written to on the device. Encoded as an unsigned integer (the Keel SUIT
/// parameter `-256`, see [`wire::PARAM_KEEL_TARGET`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// An app slot (`app-a` / `app-b`): the 256-byte keel-image header followed by the image.
    AppSlot = 1,
    /// A visor slot (`visor-a` / `visor-b`), for visor self-updates (planned).
    VisorSlot = 2,
    /// The app data partition (planned).
    AppData = 3,
}

impl Target {
    /// The target with wire value `v`, if known.
    pub fn from_wire(v: u64) -> Option<Target> {
        match v {
            1 => Some(Target::AppSlot),
            2 => Some(Target::VisorSlot),
            3 => Some(Target::AppData),
            _ => None,
        }
    }

    /// The wire value.
    pub fn to_wire(self) -> u64 {
        self as u64
    }

    /// Short name for logs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::AppSlot => "app-slot",
            Target::VisorSlot => "visor-slot",
            Target::AppData => "app-data",
        }
    }
}

impl core::fmt::Display for Target {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can be wrong with a bundle, an envelope or a builder input.
///
/// The `&'static str` names the item concerned (SUIT names where there is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Not well-formed CBOR, an item of the wrong type, or an indefinite-length item.
    Malformed(&'static str),
    /// Bytes follow a complete item (at the top level or inside a `bstr .cbor`).
    TrailingBytes(&'static str),
    /// A required field is absent.
    MissingField(&'static str),
    /// A map key appears twice.
    DuplicateField(&'static str),
    /// A valid SUIT/COSE construct that Keel's subset does not accept (an unknown map key, a
    /// severable member, a command other than set-component-index/override-parameters, a
    /// second signature, ...).
    Unsupported(&'static str),
    /// A value is out of range (text too long, zero crash limit, bad component id, ...).
    InvalidValue(&'static str),
    /// `suit-manifest-version` is not 1.
    UnsupportedManifestVersion,
    /// A digest algorithm other than SHA-256 (COSE -16).
    UnsupportedDigestAlgorithm,
    /// A signature algorithm other than EdDSA (COSE -8).
    UnsupportedSignatureAlgorithm,
    /// More components or integrated payloads than [`MAX_COMPONENTS`].
    TooManyComponents,
    /// The bundle, or the sum of its layer sizes, exceeds [`MAX_BUNDLE_SIZE`].
    TooLarge,
    /// The SUIT_Digest in the authentication wrapper does not match the manifest.
    ManifestDigestMismatch,
    /// The signature does not verify.
    BadSignature,
    /// The key id in the signature names none of the trusted keys.
    UnknownSigner,
    /// A component's target is not one this version knows.
    UnknownTarget,
    /// The device has no region for a component (the capacity function returned `None`).
    NoRegion,
    /// A layer is larger than its target region.
    LayerTooLarge,
    /// A layer's bytes do not match the size and SHA-256 in the manifest.
    LayerDigestMismatch,
    /// A component has no integrated payload in the bundle.
    MissingLayer,
    /// An integrated payload belongs to no component.
    UnexpectedLayer,
    /// An `app-slot` layer is not a valid keel-image (header and digest), checked by the builder.
    BadAppImage,
    /// A key file or key text could not be parsed.
    BadKey(&'static str),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Malformed(w) => write!(f, "malformed CBOR: {w}"),
            Error::TrailingBytes(w) => write!(f, "trailing bytes after {w}"),
            Error::MissingField(w) => write!(f, "missing field: {w}"),
            Error::DuplicateField(w) => write!(f, "duplicate field: {w}"),
            Error::Unsupported(w) => write!(f, "not supported by Keel bundles: {w}"),
            Error::InvalidValue(w) => write!(f, "invalid value: {w}"),
            Error::UnsupportedManifestVersion => f.write_str("unsupported suit-manifest-version (must be 1)"),
            Error::UnsupportedDigestAlgorithm => f.write_str("unsupported digest algorithm (must be SHA-256)"),
            Error::UnsupportedSignatureAlgorithm => f.write_str("unsupported signature algorithm (must be EdDSA)"),
            Error::TooManyComponents => write!(f, "more than {MAX_COMPONENTS} components"),
            Error::TooLarge => write!(f, "bundle larger than {} MiB", MAX_BUNDLE_SIZE >> 20),
            Error::ManifestDigestMismatch => f.write_str("manifest digest mismatch"),
            Error::BadSignature => f.write_str("bad signature"),
            Error::UnknownSigner => f.write_str("signed by an unknown key"),
            Error::UnknownTarget => f.write_str("unknown layer target"),
            Error::NoRegion => f.write_str("no flash region for this component"),
            Error::LayerTooLarge => f.write_str("layer larger than its flash region"),
            Error::LayerDigestMismatch => f.write_str("layer size or digest mismatch"),
            Error::MissingLayer => f.write_str("layer missing from bundle"),
            Error::UnexpectedLayer => f.write_str("bundle holds a layer no component names"),
            Error::BadAppImage => f.write_str("app layer is not a valid keel image"),
            Error::BadKey(w) => write!(f, "bad key: {w}"),
        }
    }
}

impl core::error::Error for Error {}

/// The key id of an Ed25519 public key: the first [`KEY_ID_LEN`] bytes of its SHA-256. The builder
/// puts it in the COSE_Sign1 unprotected header (`kid`, label 4) so the verifier can pick the key
/// and tell an unknown signer from a bad signature.
pub fn key_id(public_key: &PublicKey) -> [u8; KEY_ID_LEN] {
    let d = sha256(public_key);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&d[..KEY_ID_LEN]);
    id
}

/// Encodes a visor version for [`Policies::min_visor_version`]: `major << 24 | minor << 16 |
/// patch`, so versions compare as integers.
pub const fn visor_version(major: u8, minor: u8, patch: u16) -> u32 {
    (major as u32) << 24 | (minor as u32) << 16 | patch as u32
}

/// Parses `"MAJOR.MINOR.PATCH"` (as in a crate version) into a [`visor_version`] value; `None`
/// if it is not exactly three numbers in range.
pub fn parse_visor_version(s: &str) -> Option<u32> {
    let mut parts = s.split('.');
    let major: u8 = parts.next()?.parse().ok()?;
    let minor: u8 = parts.next()?.parse().ok()?;
    let patch: u16 = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some(visor_version(major, minor, patch))
}

/// Splits a value made by [`visor_version`] into `(major, minor, patch)`.
pub const fn split_visor_version(v: u32) -> (u8, u8, u16) {
    ((v >> 24) as u8, (v >> 16) as u8, v as u16)
}

/// Region capacities of the reference board (mps2-an505, `docs/flash-layout.md`): the size of
/// one slot of the component's target partition. Pass it (or the device's own function) to
/// [`verify_envelope`] and [`build_bundle`].
pub fn reference_region_capacity(component: &Component<'_>) -> Option<u32> {
    use keel_flash::layout::{APP_A, APP_DATA, VISOR_A};
    Some(match component.target {
        Target::AppSlot => APP_A.size,
        Target::VisorSlot => VISOR_A.size,
        Target::AppData => APP_DATA.size,
    })
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}
