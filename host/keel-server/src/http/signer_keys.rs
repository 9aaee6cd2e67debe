//! Bundle signer keys: list, register, revoke.

use super::*;

impl From<SignerKey> for SignerKeyJson {
    fn from(k: SignerKey) -> Self {
        let kid = crate::unhex(&k.public_key)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map_or(String::new(), |pk| crate::hex(&keel_bundle::key_id(&pk)));
        SignerKeyJson {
            id: k.id,
            name: k.name,
            public_key: k.public_key,
            kid,
            created_at_us: k.created_at,
            revoked_at_us: k.revoked_at,
        }
    }
}

/// List the account's bundle signer keys, revoked ones included.
#[utoipa::path(get, path = "/v1/signer-keys", tag = "updates",
    responses((status = 200, body = Vec<SignerKeyJson>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_signer_keys(
    State(st): State<AppState>,
    auth: Account,
) -> Result<Json<Vec<SignerKeyJson>>, ApiError> {
    let acct = auth.account;
    Ok(Json(st.store.signer_keys(&acct).await?.into_iter().map(Into::into).collect()))
}

/// Register a public key whose signatures the account's bundle uploads are verified against.
#[utoipa::path(post, path = "/v1/signer-keys", tag = "updates", request_body = NewSignerKey,
    responses((status = 201, body = SignerKeyJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn add_signer_key(
    State(st): State<AppState>,
    auth: Account,
    body: Result<Json<NewSignerKey>, JsonRejection>,
) -> Result<(StatusCode, Json<SignerKeyJson>), ApiError> {
    auth.require(Scope::Admin)?;
    let acct = auth.account;
    let Json(k) = body?;
    if !valid_name(&k.name) {
        return Err(ApiError::bad_request("bad_name", "name must be 1..100 characters without control characters"));
    }
    let key = keel_bundle::public_key_from_text(&k.public_key).map_err(|e| {
        ApiError::bad_request(
            "bad_key",
            format!("public_key: {e}; give the SPKI PEM `keel keys new` wrote to NAME.pub, or 64 hex digits"),
        )
    })?;
    match st.store.add_signer_key(&acct, &key, &k.name).await? {
        Some(k) => Ok((StatusCode::CREATED, Json(k.into()))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            "this key is already registered in your account (`keel keys list`); a revoked key cannot be added \
             again: make a new one with `keel keys new`",
        )),
    }
}

/// Revoke a signer key: bundles it signed stay stored and deployable, new uploads signed with it
/// are refused.
#[utoipa::path(delete, path = "/v1/signer-keys/{id}", tag = "updates",
    params(("id" = String, Path, description = "Signer key id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_signer_key(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Scope::Admin)?;
    let acct = auth.account;
    match st.store.revoke_signer_key(&acct, &id).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(not_found("signer key", &id, "`keel keys list`")),
    }
}
