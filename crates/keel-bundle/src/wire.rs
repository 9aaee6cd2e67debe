//! The numbers on the wire: CBOR tags, map keys, command and parameter labels, algorithms.
//!
//! SUIT labels are those of draft-ietf-suit-manifest-34 (IANA "SUIT" registries); Keel's own
//! labels sit in the SUIT private-use range (below -255). See `docs/bundle-format.md`.

/// CBOR tag of SUIT_Envelope_Tagged (optional on input, always written).
pub const TAG_ENVELOPE: u64 = 107;
/// CBOR tag of COSE_Sign1_Tagged (optional on input, always written).
pub const TAG_COSE_SIGN1: u64 = 18;

/// SUIT_Envelope: suit-authentication-wrapper.
pub const ENV_AUTHENTICATION_WRAPPER: i64 = 2;
/// SUIT_Envelope: suit-manifest.
pub const ENV_MANIFEST: i64 = 3;
/// Prefix of an integrated payload key (`"#" + component id`).
pub const PAYLOAD_KEY_PREFIX: char = '#';

/// SUIT_Manifest: suit-manifest-version (must be 1).
pub const MANIFEST_VERSION: i64 = 1;
/// SUIT_Manifest: suit-manifest-sequence-number.
pub const MANIFEST_SEQUENCE_NUMBER: i64 = 2;
/// SUIT_Manifest: suit-common.
pub const MANIFEST_COMMON: i64 = 3;
/// SUIT_Manifest, private use: the Keel policy map.
pub const MANIFEST_KEEL_POLICIES: i64 = -256;

/// SUIT_Common: suit-components.
pub const COMMON_COMPONENTS: i64 = 2;
/// SUIT_Common: suit-shared-sequence.
pub const COMMON_SHARED_SEQUENCE: i64 = 4;

/// Command: suit-directive-set-component-index.
pub const DIRECTIVE_SET_COMPONENT_INDEX: u64 = 12;
/// Command: suit-directive-override-parameters.
pub const DIRECTIVE_OVERRIDE_PARAMETERS: u64 = 20;

/// Parameter: suit-parameter-image-digest (`bstr .cbor SUIT_Digest`).
pub const PARAM_IMAGE_DIGEST: i64 = 3;
/// Parameter: suit-parameter-image-size.
pub const PARAM_IMAGE_SIZE: i64 = 14;
/// Parameter, private use: the Keel layer target ([`crate::Target`]).
pub const PARAM_KEEL_TARGET: i64 = -256;

/// Keel policy: app name (text, at most [`crate::MAX_TEXT_LEN`] bytes).
pub const POLICY_APP_NAME: i64 = 1;
/// Keel policy: app version (text, at most [`crate::MAX_TEXT_LEN`] bytes).
pub const POLICY_APP_VERSION: i64 = 2;
/// Keel policy: minimum visor version (uint, [`crate::visor_version`] encoding).
pub const POLICY_MIN_VISOR_VERSION: i64 = 3;
/// Keel policy: debug public key (32-byte bstr, Ed25519).
pub const POLICY_DEBUG_KEY: i64 = 4;
/// Keel policy: crashes allowed during the trial before rollback (uint 1..=255).
pub const POLICY_MAX_TRIAL_CRASHES: i64 = 5;
/// Keel policy: maximum politeness time in seconds (uint).
pub const POLICY_MAX_POLITENESS_TIME: i64 = 6;
/// Keel policy: connectivity grace time in seconds (uint; 0 = the app must confirm).
pub const POLICY_CONNECTIVITY_GRACE_TIME: i64 = 7;

/// SUIT_Digest algorithm: SHA-256 (COSE algorithm -16).
pub const ALG_SHA256: i64 = -16;
/// COSE algorithm EdDSA (-8), here always Ed25519.
pub const ALG_EDDSA: i64 = -8;
/// COSE header label: alg.
pub const COSE_HEADER_ALG: i64 = 1;
/// COSE header label: kid.
pub const COSE_HEADER_KID: i64 = 4;
/// COSE Sig_structure context string for COSE_Sign1.
pub const SIG_CONTEXT_SIGN1: &str = "Signature1";
