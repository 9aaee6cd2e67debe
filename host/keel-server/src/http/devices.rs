//! Devices: the registry (list, show, rename and tag, register, delete).

use super::*;

impl From<Device> for DeviceJson {
    fn from(d: Device) -> Self {
        let (app_name, app_version) = d.app.map_or((None, None), |(a, b)| (Some(a), Some(b)));
        let ev = |e: Option<(i64, String)>| e.map(|(at_us, text)| EventJson { at_us, text });
        DeviceJson {
            id: d.id,
            name: d.name,
            public_key: d.public_key,
            tags: d.tags,
            online: d.online,
            last_seen_us: d.last_seen,
            visor_version: d.visor_version,
            app_name,
            app_version,
            boot_count: d.boot_count,
            last_boot: ev(d.last_boot),
            last_crash: ev(d.last_crash),
            update: None,
        }
    }
}

/// List the account's devices.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", params(DevicesQuery),
    responses((status = 200, body = Vec<DeviceJson>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_devices(
    State(st): State<AppState>,
    auth: Account,
    q: Result<Query<DevicesQuery>, QueryRejection>,
) -> Result<Json<Vec<DeviceJson>>, ApiError> {
    let acct = auth.account;
    let Query(q) = q?;
    let devices = st.store.devices(&acct).await?;
    Ok(Json(
        devices.into_iter().filter(|d| q.tag.as_ref().is_none_or(|t| d.tags.contains(t))).map(Into::into).collect(),
    ))
}

/// Show one device.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = DeviceJson), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show_device(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
) -> Result<Json<DeviceJson>, ApiError> {
    let acct = auth.account;
    let mut d: DeviceJson = own_device(&st, &acct, &id).await?.into();
    d.update = update_json(&st.store, &d.id).await?;
    Ok(Json(d))
}

pub(super) async fn update_json(store: &Store, device_id: &str) -> Result<Option<UpdateJson>, ApiError> {
    let target = store.deployment(device_id).await?.map(|d| TargetJson {
        bundle: d.bundle.id,
        app: d.bundle.app_name,
        version: d.bundle.app_version,
        sequence: d.bundle.sequence,
        via: d.via,
        deployed_at_us: d.deployed_at,
    });
    let status = store.update_status(device_id).await?;
    if target.is_none() && status.is_none() {
        return Ok(None);
    }
    let s = status.as_ref();
    let (progress, total) = s.map_or((0, 0), |s| (s.progress, s.total));
    Ok(Some(UpdateJson {
        target,
        state: s.map(|s| s.state.clone()),
        sequence: s.map_or(0, |s| s.sequence),
        installed: s.map_or(0, |s| s.installed),
        progress,
        total,
        progress_pct: (total > 0).then(|| (progress.min(total) * 100 / total) as u8),
        reason: s.map_or(String::new(), |s| s.reason.clone()),
        updated_at_us: s.map(|s| s.updated_at),
    }))
}

/// Rename a device or replace its tags.
#[utoipa::path(patch, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id")),
    request_body = DevicePatch,
    responses((status = 200, body = DeviceJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn patch_device(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
    body: Result<Json<DevicePatch>, JsonRejection>,
) -> Result<Json<DeviceJson>, ApiError> {
    auth.require(Scope::Deploy)?;
    let acct = auth.account;
    let d = own_device(&st, &acct, &id).await?;
    let Json(p) = body?;
    if let Some(n) = &p.name {
        if !valid_name(n) {
            return Err(ApiError::bad_request("bad_name", "name must be 1..100 characters without control characters"));
        }
    }
    if let Some(tags) = &p.tags {
        if tags.len() > 32 || !tags.iter().all(|t| valid_tag(t)) {
            return Err(ApiError::bad_request(
                "bad_tags",
                "at most 32 tags, each 1..64 characters of a-z A-Z 0-9 - _ . :",
            ));
        }
    }
    if let Some(n) = &p.name {
        st.store.rename_device(&d.id, n).await?;
    }
    if let Some(tags) = &p.tags {
        let mut tags = tags.clone();
        tags.sort();
        tags.dedup();
        st.store.set_tags(&d.id, &tags).await?;
    }
    Ok(Json(own_device(&st, &acct, &id).await?.into()))
}

/// Delete a device with its logs; its key can no longer connect.
#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_device(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Scope::Admin)?;
    let acct = auth.account;
    let d = own_device(&st, &acct, &id).await?;
    st.store.delete_device(&d.id).await?;
    st.auth_changed();
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn parse_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// Register a device (its id and static public key) in the account. `keel device provision`
/// calls this and writes the matching factory data.
#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = NewDevice,
    responses((status = 201, body = DeviceJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn create_device(
    State(st): State<AppState>,
    auth: Account,
    body: Result<Json<NewDevice>, JsonRejection>,
) -> Result<(StatusCode, Json<DeviceJson>), ApiError> {
    auth.require(Scope::Admin)?;
    let acct = auth.account;
    let Json(d) = body?;
    let key =
        parse_key(&d.public_key).ok_or_else(|| ApiError::bad_request("bad_key", "public_key must be 64 hex digits"))?;
    let id_ok = d.id.len() == 34 && d.id.starts_with("kd") && d.id[2..].bytes().all(|c| c.is_ascii_hexdigit());
    if !id_ok || !valid_name(&d.name) {
        return Err(ApiError::bad_request("bad_device", "id must be kd + 32 hex digits, name 1..100 chars"));
    }
    if d.tags.len() > 32 || !d.tags.iter().all(|t| valid_tag(t)) {
        return Err(ApiError::bad_request("bad_tags", "at most 32 tags, each 1..64 characters of a-z A-Z 0-9 - _ . :"));
    }
    // One answer for an id or key taken in this account or in another, so registration tells
    // nobody whether another account has a device (only that this id or key cannot be used).
    let unavailable = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "device_unavailable",
            "this device id or public key cannot be registered: it is already in use (if the device is in your \
             account, `keel devices` lists it; otherwise provision it with a new identity)",
        )
    };
    if st.store.device(&d.id).await?.is_some() || st.store.device_by_key(&key).await?.is_some() {
        return Err(unavailable());
    }
    match st.store.add_device(&acct, &d.id, &key, &d.name).await {
        Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => return Err(unavailable()),
        r => r?,
    }
    if !d.tags.is_empty() {
        st.store.set_tags(&d.id, &d.tags).await?;
    }
    Ok((StatusCode::CREATED, Json(own_device(&st, &acct, &d.id).await?.into())))
}
