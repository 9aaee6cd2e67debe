//! API tokens: list, create (scope, expiry), revoke.

use super::*;

impl From<TokenInfo> for TokenJson {
    fn from(t: TokenInfo) -> Self {
        TokenJson {
            id: t.id,
            name: t.name,
            created_at_us: t.created_at,
            scope: t.scope,
            expires_at_us: t.expires_at,
            last_used_at_us: t.last_used_at,
        }
    }
}

/// List the account's API tokens (never their secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenJson>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_tokens(State(st): State<AppState>, auth: Account) -> Result<Json<Vec<TokenJson>>, ApiError> {
    let acct = auth.account;
    Ok(Json(st.store.tokens(&acct).await?.into_iter().map(Into::into).collect()))
}

/// Create an API token for the account (needs scope `admin`). The new token's scope and expiry
/// cannot exceed the creating token's.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(super) async fn create_token(
    State(st): State<AppState>,
    auth: Account,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    auth.require(Scope::Admin)?;
    let Json(t) = body?;
    if !valid_name(&t.name) {
        return Err(ApiError::bad_request("bad_name", "name must be 1..100 characters without control characters"));
    }
    let scope = match t.scope.as_deref() {
        None => Scope::Read,
        Some(s) => Scope::parse(s)
            .ok_or_else(|| ApiError::bad_request("bad_scope", "scope must be one of read, deploy, admin"))?,
    };
    const MAX_LIFETIME_S: u64 = 100 * 365 * 86_400;
    let expires_at = match t.expires_in_s {
        None => None,
        Some(s) if (1..=MAX_LIFETIME_S).contains(&s) => Some(crate::unix_us() as i64 + s as i64 * 1_000_000),
        Some(_) => {
            return Err(ApiError::bad_request("bad_expiry", "expires_in_s must be 1..=3153600000 (100 years)"));
        }
    };
    let outlives = match (auth.expires_at, expires_at) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(mine), Some(new)) => new > mine,
    };
    if scope > auth.scope || outlives {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "scope_exceeded",
            "a token cannot create a token with more scope than its own or one that outlives it",
        ));
    }
    let token = st.store.create_token_with(&auth.account, &t.name, scope.as_str(), expires_at).await?;
    let id = crate::store::token_id(&token);
    tracing::info!(account = %auth.account, by = %auth.token_id, token = %id, scope = scope.as_str(), "token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken { id, name: t.name, token, scope: scope.as_str().into(), expires_at_us: expires_at }),
    ))
}

/// Revoke one of the account's API tokens (needs scope `admin`; it may be the one making the
/// request, unless it is the account's last admin token without expiry: 409 `last_admin_token`).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "Token id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn revoke_token(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Scope::Admin)?;
    let acct = auth.account;
    let tokens = st.store.tokens(&acct).await?;
    // An admin token that never expires must remain, or the account could lose every admin
    // token (by revocation or by expiry) and no API call could make a new one.
    let lasting_admin = |t: &TokenInfo| t.scope == "admin" && t.expires_at.is_none();
    if tokens.iter().any(|t| t.id == id && lasting_admin(t)) && !tokens.iter().any(|t| t.id != id && lasting_admin(t)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_admin_token",
            "this is the account's last admin token without expiry: create another one first (`keel token create \
             NAME --scope admin`), then revoke this one",
        ));
    }
    if st.store.revoke_token(&acct, &id).await? {
        st.auth_changed();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token '{id}' in your account (`keel tokens`)"),
        ))
    }
}
