//! Update bundles: upload (with every check before anything is stored), list, show.

use super::*;

/// How far (in sequence numbers) a bundle may lead both the Unix time in seconds and the
/// account's highest sequence without `force`: 10 years of seconds.
pub(super) const MAX_SEQUENCE_LEAD: u64 = 10 * 366 * 86_400;

/// Query of `POST /v1/bundles`.
#[derive(Deserialize, IntoParams, Default)]
pub struct UploadQuery {
    /// Accept a sequence more than 10 years ahead of the clock and of the account's bundles.
    #[serde(default)]
    pub force: bool,
}

/// A layer of a bundle.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct LayerJson {
    /// Component index in manifest order.
    pub index: u8,
    /// Component id, e.g. `app`.
    pub component: String,
    /// Target: `app-slot`, `visor-slot` or `app-data`.
    pub target: String,
    /// Size in bytes.
    pub size: u32,
    /// SHA-256, hex (its key in the object store: `layers/<sha256>`).
    pub sha256: String,
}

/// A stored bundle.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct BundleJson {
    /// Bundle id (`bn-...`).
    pub id: String,
    /// App name (from the signed manifest).
    pub app: String,
    /// App version (from the signed manifest).
    pub version: String,
    /// Manifest sequence number: devices install only bundles above what they run.
    pub sequence: u64,
    /// Total layer bytes.
    pub size: u64,
    /// SHA-256 of the manifest, hex.
    pub manifest_digest: String,
    /// The signer key that verified it.
    pub signer_key: String,
    /// Upload time, µs since the epoch.
    pub uploaded_at_us: i64,
    /// Layers in manifest order.
    pub layers: Vec<LayerJson>,
}

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
    if bytes.len() > keel_bundle::MAX_BUNDLE_SIZE {
        return Err(bundle_error(keel_bundle::Error::TooLarge));
    }
    // Structure and layer digests (no signature yet).
    let split = keel_bundle::split_bundle(&bytes).map_err(bundle_error)?;
    // Signature against the account's keys, then regions, on the envelope the devices will get.
    let keys = st.store.active_signer_keys(&acct).await?;
    if keys.is_empty() {
        return Err(ApiError::bad_request(
            "no_signer_keys",
            "your account has no signer keys: register the public key that signs your bundles with \
             `keel keys add KEY.pub --name NAME` (`keel keys new --out KEY` makes a key pair)",
        ));
    }
    let publics: Vec<[u8; 32]> = keys.iter().map(|k| k.1).collect();
    let env = keel_bundle::Envelope::parse(&split.envelope).map_err(bundle_error)?;
    let signer = env.verify_signature(&publics).map_err(bundle_error)?;
    let manifest = keel_bundle::verify_envelope(&split.envelope, &publics, keel_bundle::reference_region_capacity)
        .map_err(bundle_error)?;
    let p = manifest.policies;
    if p.app_name.is_empty() {
        return Err(ApiError::bad_request(
            "bad_bundle",
            "the bundle names no app (policy app_name is empty): `keel bundle` takes the name from the ELF",
        ));
    }
    if manifest.sequence == 0 || manifest.sequence > i64::MAX as u64 {
        return Err(ApiError::bad_request(
            "bad_sequence",
            "the sequence number must be 1..=9223372036854775807 (0 means \"factory image\" on devices)",
        ));
    }
    // Only what devices can install today: one component `app` written to the app slot (the
    // update agent fetches component 0 and accepts only `app`).
    let installable = split.layers.len() == 1
        && split.layers.iter().all(|l| l.id == "app" && l.target == keel_bundle::Target::AppSlot);
    if !installable {
        let got: Vec<String> = split.layers.iter().map(|l| format!("{} -> {}", l.id, l.target)).collect();
        return Err(ApiError::bad_request(
            "uninstallable",
            format!(
                "no device can install this bundle: devices take exactly one component `app` targeting `app-slot` \
                 (this one has: {})",
                got.join(", ")
            ),
        ));
    }
    // From here to the insert, one upload at a time on this node: the sequence checks and the
    // insert are not one statement, and two concurrent uploads must not both pass them.
    let _one_at_a_time = st.uploads.lock().await;
    // The signer key may have been revoked while the body was read and checked.
    if !st.store.active_signer_keys(&acct).await?.iter().any(|k| k.0 == keys[signer].0) {
        return Err(bundle_error(keel_bundle::Error::UnknownSigner));
    }
    // Sequences are unique per account: a device's anti-rollback counter covers every app.
    if let Some((id, app)) = st.store.bundle_at_sequence(&acct, manifest.sequence).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_sequence",
            format!(
                "bundle {id} (app '{app}') already has sequence {}: sequences are unique per account, since devices \
                 install only sequences above the one they run; build the new bundle with a higher --sequence",
                manifest.sequence
            ),
        ));
    }
    // A sequence far ahead locks devices out of every later update (they refuse anything lower
    // than what they run): refused unless forced.
    let now_s = crate::unix_us() / 1_000_000;
    let ceiling = st.store.highest_sequence(&acct).await?.max(now_s).saturating_add(MAX_SEQUENCE_LEAD);
    if manifest.sequence > ceiling && !q.force {
        return Err(ApiError::bad_request(
            "sequence_jump",
            format!(
                "sequence {} is more than 10 years ahead of both the clock (the `keel bundle` default is the Unix \
                 time) and the account's highest bundle: once installed, devices refuse every later bundle below \
                 it. Rebuild with a lower --sequence, or upload with force (`keel apps upload --force`, \
                 `?force=true`) if this is intended",
                manifest.sequence
            ),
        ));
    }
    let layers =
        split.layers.iter().map(|l| (l.id.as_str(), l.target.as_str(), l.bytes.as_slice(), l.digest)).collect();
    let new = NewBundle {
        account_id: &acct,
        app_name: p.app_name,
        app_version: p.app_version,
        sequence: manifest.sequence,
        manifest_digest: env.manifest_digest(),
        envelope: &split.envelope,
        signer_key_id: &keys[signer].0,
        layers,
    };
    let b = st.store.insert_bundle(&new).await?;
    Counters::add(&st.store.counters().bundle_uploads, 1);
    tracing::info!(bundle = %b.id, app = %b.app_name, sequence = b.sequence, "bundle uploaded");
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
