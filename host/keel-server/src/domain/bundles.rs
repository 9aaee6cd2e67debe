//! Bundle acceptance: every check an uploaded bundle passes before anything is stored.

use super::Error;
use crate::ota::{Bundle, NewBundle};
use crate::store::{Counters, Store};

/// How far (in sequence numbers) a bundle may lead both the Unix time in seconds and the
/// account's highest sequence without `force`: 10 years of seconds.
pub const MAX_SEQUENCE_LEAD: u64 = 10 * 366 * 86_400;

/// Checks `bytes` as a bundle of `account` and stores it: size, structure and layer digests,
/// the signature against the account's non-revoked signer keys, regions, an app name, a
/// sequence of 1..=i64::MAX, installability (one component `app` for the app slot), a sequence
/// unique in the account and not more than [`MAX_SEQUENCE_LEAD`] ahead of both the clock and the
/// account's highest (unless `force`). `one_at_a_time` serializes the sequence checks and the
/// insert of uploads on this node.
pub async fn accept(
    store: &Store,
    one_at_a_time: &tokio::sync::Mutex<()>,
    account: &str,
    bytes: &[u8],
    force: bool,
) -> Result<Bundle, Error> {
    if bytes.len() > keel_bundle::MAX_BUNDLE_SIZE {
        return Err(Error::TooLarge);
    }
    // Structure and layer digests (no signature yet).
    let split = keel_bundle::split_bundle(bytes).map_err(Error::Bundle)?;
    // Signature against the account's keys, then regions, on the envelope the devices will get.
    let keys = store.active_signer_keys(account).await?;
    if keys.is_empty() {
        return Err(Error::NoSignerKeys);
    }
    let publics: Vec<[u8; 32]> = keys.iter().map(|k| k.1).collect();
    let env = keel_bundle::Envelope::parse(&split.envelope).map_err(Error::Bundle)?;
    let signer = env.verify_signature(&publics).map_err(Error::Bundle)?;
    let manifest = keel_bundle::verify_envelope(&split.envelope, &publics, keel_bundle::reference_region_capacity)
        .map_err(Error::Bundle)?;
    let p = manifest.policies;
    if p.app_name.is_empty() {
        return Err(Error::NoAppName);
    }
    if manifest.sequence == 0 || manifest.sequence > i64::MAX as u64 {
        return Err(Error::BadSequence);
    }
    // Only what devices can install today: one component `app` written to the app slot (the
    // update agent fetches component 0 and accepts only `app`).
    let installable = split.layers.len() == 1
        && split.layers.iter().all(|l| l.id == "app" && l.target == keel_bundle::Target::AppSlot);
    if !installable {
        let components = split.layers.iter().map(|l| format!("{} -> {}", l.id, l.target)).collect();
        return Err(Error::Uninstallable { components });
    }
    // From here to the insert, one upload at a time on this node: the sequence checks and the
    // insert are not one statement, and two concurrent uploads must not both pass them.
    let _one = one_at_a_time.lock().await;
    // The signer key may have been revoked while the body was read and checked.
    if !store.active_signer_keys(account).await?.iter().any(|k| k.0 == keys[signer].0) {
        return Err(Error::Bundle(keel_bundle::Error::UnknownSigner));
    }
    // Sequences are unique per account: a device's anti-rollback counter covers every app.
    if let Some((bundle, app)) = store.bundle_at_sequence(account, manifest.sequence).await? {
        return Err(Error::DuplicateSequence { sequence: manifest.sequence, bundle, app });
    }
    // A sequence far ahead locks devices out of every later update (they refuse anything lower
    // than what they run): refused unless forced.
    let now_s = crate::unix_us() / 1_000_000;
    let ceiling = store.highest_sequence(account).await?.max(now_s).saturating_add(MAX_SEQUENCE_LEAD);
    if manifest.sequence > ceiling && !force {
        return Err(Error::SequenceJump { sequence: manifest.sequence });
    }
    let layers =
        split.layers.iter().map(|l| (l.id.as_str(), l.target.as_str(), l.bytes.as_slice(), l.digest)).collect();
    let new = NewBundle {
        account_id: account,
        app_name: p.app_name,
        app_version: p.app_version,
        sequence: manifest.sequence,
        manifest_digest: env.manifest_digest(),
        envelope: &split.envelope,
        signer_key_id: &keys[signer].0,
        layers,
    };
    let b = store.insert_bundle(&new).await?;
    Counters::add(&store.counters().bundle_uploads, 1);
    tracing::info!(bundle = %b.id, app = %b.app_name, sequence = b.sequence, "bundle uploaded");
    Ok(b)
}
