//! The server's rules, with no HTTP in them: what makes an uploaded bundle acceptable
//! ([`bundles::accept`]) and how a deployment resolves its bundle and devices
//! ([`deployments::deploy`]). Offer reconciliation, the third rule set, is sans-IO in
//! [`crate::connection`]. Front ends (the HTTP API today) call these and turn [`Error`] into their
//! own answers; the rules are tested through the API's tests on both databases.

pub mod bundles;
pub mod deployments;

/// Why a domain operation was refused (or failed).
#[derive(Debug)]
pub enum Error {
    /// Storage failed.
    Store(sqlx::Error),
    /// The bundle is above [`keel_bundle::MAX_BUNDLE_SIZE`].
    TooLarge,
    /// The bundle failed a structural, digest, signature or region check.
    Bundle(keel_bundle::Error),
    /// The account has no signer key to verify bundles with.
    NoSignerKeys,
    /// The manifest names no app.
    NoAppName,
    /// The sequence is 0 or above `i64::MAX`.
    BadSequence,
    /// No device can install the bundle (today: exactly one component `app` for the app slot).
    Uninstallable {
        /// Its components, as `id -> target`.
        components: Vec<String>,
    },
    /// Another bundle of the account has this sequence (sequences are unique per account).
    DuplicateSequence {
        /// The sequence.
        sequence: u64,
        /// The bundle that has it.
        bundle: String,
        /// Its app.
        app: String,
    },
    /// The sequence is far ahead of the clock and the account's bundles, and not forced.
    SequenceJump {
        /// The sequence.
        sequence: u64,
    },
    /// No bundle with this id or `APP@VERSION` in the account.
    BundleNotFound(String),
    /// An empty bundle reference.
    BadBundleRef,
    /// No device with this id in the account.
    DeviceNotFound(String),
    /// A tag that is not valid.
    BadTag,
    /// No device of the account has this tag.
    TagNotFound(String),
    /// Not exactly one of a device and a tag.
    BadTarget,
    /// The bundle's signer key is revoked, and the deployment is not forced.
    SignerRevoked {
        /// The bundle.
        bundle: String,
        /// The signer key's id.
        key: String,
        /// Its name.
        name: String,
    },
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Store(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Store(e) => write!(f, "storage: {e}"),
            Error::TooLarge => write!(f, "bundle larger than {} MiB", keel_bundle::MAX_BUNDLE_SIZE >> 20),
            Error::Bundle(e) => write!(f, "{e}"),
            Error::NoSignerKeys => write!(f, "the account has no signer keys"),
            Error::NoAppName => write!(f, "the bundle names no app"),
            Error::BadSequence => write!(f, "the sequence number must be 1..=9223372036854775807"),
            Error::Uninstallable { components } => {
                write!(f, "no device can install this bundle (components: {})", components.join(", "))
            }
            Error::DuplicateSequence { sequence, bundle, app } => {
                write!(f, "bundle {bundle} (app '{app}') already has sequence {sequence}")
            }
            Error::SequenceJump { sequence } => write!(f, "sequence {sequence} is more than 10 years ahead"),
            Error::BundleNotFound(b) => write!(f, "no bundle '{b}'"),
            Error::BadBundleRef => write!(f, "no bundle given"),
            Error::DeviceNotFound(d) => write!(f, "no device '{d}'"),
            Error::BadTag => write!(f, "invalid tag"),
            Error::TagNotFound(t) => write!(f, "no device has tag '{t}'"),
            Error::BadTarget => write!(f, "give exactly one of a device and a tag"),
            Error::SignerRevoked { bundle, key, .. } => write!(f, "bundle {bundle}'s signer key {key} is revoked"),
        }
    }
}

impl std::error::Error for Error {}

/// A tag: 1..64 characters of `a-z A-Z 0-9 - _ . :`.
pub fn valid_tag(t: &str) -> bool {
    (1..=64).contains(&t.len()) && t.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(&c))
}
