//! Update bundles: upload (with every check before anything is stored), list, show.

use super::*;

impl From<Bundle> for BundleJson {
    fn from(b: Bundle) -> Self {
        BundleJson {
            id: b.id,
            app: b.app_name,
            version: b.app_version,
            sequence: b.sequence,
            size: b.total_size,
            manifest_digest: b.manifest_digest,
            signer_key: b.signer_key_id,
            uploaded_at_us: b.uploaded_at,
            layers: b
                .layers
                .into_iter()
                .map(|l| LayerJson {
                    index: l.index,
                    component: l.component,
                    target: l.target,
                    size: l.size,
                    sha256: l.sha256,
                })
                .collect(),
        }
    }
}

/// The API error for a bundle that fails a check.
pub(super) fn bundle_error(e: keel_bundle::Error) -> ApiError {
    use keel_bundle::Error as E;
    match e {
        E::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{e} (the limit is {} MiB)", keel_bundle::MAX_BUNDLE_SIZE >> 20),
        ),
        E::UnknownSigner => ApiError::bad_request(
            "unknown_signer",
            "the bundle is signed by a key that is not registered (or is revoked) in your account: register its \
             public key with `keel keys add KEY.pub --name NAME`, or sign with a registered key",
        ),
        E::BadSignature => ApiError::bad_request(
            "bad_signature",
            "the bundle's signature does not verify with your account's signer keys: the bundle was altered or \
             signed with another key",
        ),
        E::LayerTooLarge | E::NoRegion => ApiError::bad_request(
            "layer_too_large",
            format!("{e}: a layer does not fit its flash region on the device (app slot: 2 MiB + 8 KiB)"),
        ),
        E::MissingField("suit-authentication-wrapper" | "COSE_Sign1") => ApiError::bad_request(
            "unsigned",
            format!("the bundle is not signed ({e}): build it with `keel bundle APP.elf --key KEY.key ...`"),
        ),
        other => ApiError::bad_request(
            "bad_bundle",
            format!("not a valid Keel bundle: {other} (build bundles with `keel bundle`)"),
        ),
    }
}

/// Upload a signed bundle (the raw bytes `keel bundle` writes, `application/octet-stream`).
///
/// Everything is checked before anything is stored: size (at most 64 MiB), structure, every
/// layer against the manifest's digests, the signature against the account's non-revoked signer
/// keys, every layer against its flash region, a non-empty app name and a sequence number of at
/// least 1. A second bundle with the same app name and sequence number is refused (409): devices
/// install only sequences above what they run, so two bundles cannot share one.
#[utoipa::path(post, path = "/v1/bundles", tag = "updates",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The signed bundle"),
    responses((status = 201, body = BundleJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn upload_bundle(
    State(st): State<AppState>,
    auth: Account,
    headers: HeaderMap,
    q: Result<Query<UploadQuery>, QueryRejection>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<BundleJson>), ApiError> {
    // The token is checked before a byte of the body is read: an unauthenticated upload costs the
    // server its headers only (a `Bytes` extractor would read up to 64 MiB first).
    auth.require(Scope::Deploy)?;
    let acct = auth.account;
    let Query(q) = q?;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("bundle larger than {} MiB", keel_bundle::MAX_BUNDLE_SIZE >> 20),
        )
    };
    let declared = headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_UPLOAD as u64) {
        return Err(too_large());
    }
    // The limit holds while reading, whatever the headers said.
    let bytes = axum::body::to_bytes(body, MAX_UPLOAD).await.map_err(|e| {
        if e.to_string().contains("length limit exceeded") {
            too_large()
        } else {
            ApiError::bad_request("bad_body", e.to_string())
        }
    })?;
    // Every check of the domain's bundle acceptance, then the insert.
    let b = crate::domain::bundles::accept(&st.store, &st.uploads, &acct, &bytes, q.force).await?;
    Ok((StatusCode::CREATED, Json(b.into())))
}

/// List the account's bundles, newest first.
#[utoipa::path(get, path = "/v1/bundles", tag = "updates",
    responses((status = 200, body = Vec<BundleJson>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_bundles(State(st): State<AppState>, auth: Account) -> Result<Json<Vec<BundleJson>>, ApiError> {
    let acct = auth.account;
    Ok(Json(st.store.bundles(&acct).await?.into_iter().map(Into::into).collect()))
}

pub(super) async fn own_bundle(st: &AppState, acct: &str, id: &str) -> Result<Bundle, ApiError> {
    match st.store.bundle(id).await? {
        Some(b) if b.account_id == acct => Ok(b),
        _ => Err(not_found("bundle", id, "`keel apps list`")),
    }
}

/// Show one bundle.
#[utoipa::path(get, path = "/v1/bundles/{id}", tag = "updates", params(("id" = String, Path, description = "Bundle id")),
    responses((status = 200, body = BundleJson), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show_bundle(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
) -> Result<Json<BundleJson>, ApiError> {
    let acct = auth.account;
    Ok(Json(own_bundle(&st, &acct, &id).await?.into()))
}

impl From<crate::domain::Error> for ApiError {
    fn from(e: crate::domain::Error) -> Self {
        use crate::domain::Error as E;
        match e {
            E::Store(e) => e.into(),
            E::TooLarge => bundle_error(keel_bundle::Error::TooLarge),
            E::Bundle(e) => bundle_error(e),
            E::NoSignerKeys => ApiError::bad_request(
                "no_signer_keys",
                "your account has no signer keys: register the public key that signs your bundles with \
                 `keel keys add KEY.pub --name NAME` (`keel keys new --out KEY` makes a key pair)",
            ),
            E::NoAppName => ApiError::bad_request(
                "bad_bundle",
                "the bundle names no app (policy app_name is empty): `keel bundle` takes the name from the ELF",
            ),
            E::BadSequence => ApiError::bad_request(
                "bad_sequence",
                "the sequence number must be 1..=9223372036854775807 (0 means \"factory image\" on devices)",
            ),
            E::Uninstallable { components } => ApiError::bad_request(
                "uninstallable",
                format!(
                    "no device can install this bundle: devices take exactly one component `app` targeting \
                     `app-slot` (this one has: {})",
                    components.join(", ")
                ),
            ),
            E::DuplicateSequence { sequence, bundle, app } => ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_sequence",
                format!(
                    "bundle {bundle} (app '{app}') already has sequence {sequence}: sequences are unique per \
                     account, since devices install only sequences above the one they run; build the new bundle \
                     with a higher --sequence"
                ),
            ),
            E::SequenceJump { sequence } => ApiError::bad_request(
                "sequence_jump",
                format!(
                    "sequence {sequence} is more than 10 years ahead of both the clock (the `keel bundle` default \
                     is the Unix time) and the account's highest bundle: once installed, devices refuse every \
                     later bundle below it. Rebuild with a lower --sequence, or upload with force (`keel apps \
                     upload --force`, `?force=true`) if this is intended"
                ),
            ),
            E::BundleNotFound(b) => not_found("bundle", &b, "`keel apps list`"),
            E::BadBundleRef => ApiError::bad_request("bad_bundle", "bundle: give a bundle id or APP@VERSION"),
            E::DeviceNotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no device '{id}' in your account (`keel devices` lists them)"),
            ),
            E::BadTag => ApiError::bad_request("bad_tags", "tag: 1..64 characters of a-z A-Z 0-9 - _ . :"),
            E::TagNotFound(tag) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no device in your account has tag '{tag}' (`keel devices --tag {tag}`)"),
            ),
            E::BadTarget => ApiError::bad_request("bad_target", "give exactly one of `device` and `tag`"),
            E::SignerRevoked { bundle, key, name } => ApiError::new(
                StatusCode::CONFLICT,
                "signer_revoked",
                format!(
                    "bundle {bundle} was signed with signer key {key} ({name}), which has been revoked: deploy a \
                     bundle signed with a current key, or deploy with force (`keel deploy --force`) if you trust \
                     this one"
                ),
            ),
        }
    }
}
