//! Deployment resolution: which bundle, which devices, and whether it may be deployed.

use super::{valid_tag, Error};
use crate::ota::Bundle;
use crate::store::Store;

/// Whom a deployment targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// One device by id.
    Device(String),
    /// Every device of the account with this tag, as they are now.
    Tag(String),
}

impl Audience {
    /// From the optional `device` and `tag` of a request: exactly one must be given.
    pub fn from_parts(device: Option<String>, tag: Option<String>) -> Result<Audience, Error> {
        match (device, tag) {
            (Some(d), None) => Ok(Audience::Device(d)),
            (None, Some(t)) => Ok(Audience::Tag(t)),
            _ => Err(Error::BadTarget),
        }
    }
}

/// What a deployment did.
#[derive(Clone, Debug)]
pub struct Deployed {
    /// The bundle now targeted.
    pub bundle: Bundle,
    /// `device` or `tag:NAME`.
    pub via: String,
    /// The devices whose target it now is.
    pub devices: Vec<String>,
}

/// The account's bundle `reference`: a bundle id or `APP@VERSION` (the highest sequence of that
/// app and version).
pub async fn resolve_bundle(store: &Store, account: &str, reference: &str) -> Result<Bundle, Error> {
    let found = match reference.rsplit_once('@') {
        Some((app, version)) => store.bundle_by_version(account, app, version).await?,
        None if reference.is_empty() => return Err(Error::BadBundleRef),
        None => store.bundle(reference).await?.filter(|b| b.account_id == account),
    };
    found.ok_or_else(|| Error::BundleNotFound(reference.to_string()))
}

/// Makes `reference` the target of `audience` in `account` (connected devices hear of it at
/// once). A bundle whose signer key is revoked is refused unless `force`.
pub async fn deploy(
    store: &Store,
    account: &str,
    reference: &str,
    audience: &Audience,
    force: bool,
) -> Result<Deployed, Error> {
    let bundle = resolve_bundle(store, account, reference).await?;
    let (devices, via) = match audience {
        Audience::Device(id) => match store.device(id).await? {
            Some(d) if d.account_id == account => (vec![d.id], "device".to_string()),
            _ => return Err(Error::DeviceNotFound(id.clone())),
        },
        Audience::Tag(tag) => {
            if !valid_tag(tag) {
                return Err(Error::BadTag);
            }
            let ids: Vec<String> =
                store.devices(account).await?.into_iter().filter(|x| x.tags.contains(tag)).map(|x| x.id).collect();
            if ids.is_empty() {
                return Err(Error::TagNotFound(tag.clone()));
            }
            (ids, format!("tag:{tag}"))
        }
    };
    if !force {
        let keys = store.signer_keys(account).await?;
        if let Some(k) = keys.iter().find(|k| k.id == bundle.signer_key_id && k.revoked_at.is_some()) {
            return Err(Error::SignerRevoked { bundle: bundle.id.clone(), key: k.id.clone(), name: k.name.clone() });
        }
    }
    store.deploy(&bundle, &devices, &via).await?;
    tracing::info!(bundle = %bundle.id, %via, devices = devices.len(), "deployment");
    Ok(Deployed { bundle, via, devices })
}
