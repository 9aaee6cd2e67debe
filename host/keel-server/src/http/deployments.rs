//! Deployments and devices' update history.

use super::*;

/// Body of `POST /v1/deployments`: a bundle and either one device or a tag.
#[derive(Serialize, Deserialize, ToSchema, Debug, Default)]
pub struct NewDeployment {
    /// Bundle id (`bn-...`) or `APP@VERSION` (the highest sequence of that app and version).
    pub bundle: String,
    /// One device id.
    pub device: Option<String>,
    /// Every device with this tag (as they are now; devices tagged later are not included).
    pub tag: Option<String>,
    /// Deploy even though the bundle's signer key has been revoked.
    #[serde(default)]
    pub force: bool,
}

/// The result of a deployment.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct DeploymentJson {
    /// The bundle now targeted.
    pub bundle: BundleJson,
    /// `device` or `tag:NAME`.
    pub via: String,
    /// The devices whose target it now is.
    pub devices: Vec<String>,
}

/// Make a bundle the target of one device or of every device with a tag. Connected devices get
/// the offer at once; others when they connect. A device's earlier target is replaced (a
/// download in progress of it is cancelled).
#[utoipa::path(post, path = "/v1/deployments", tag = "updates", request_body = NewDeployment,
    responses((status = 200, body = DeploymentJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn create_deployment(
    State(st): State<AppState>,
    auth: Account,
    body: Result<Json<NewDeployment>, JsonRejection>,
) -> Result<Json<DeploymentJson>, ApiError> {
    auth.require(Scope::Deploy)?;
    let acct = auth.account;
    let Json(d) = body?;
    let bundle = match d.bundle.rsplit_once('@') {
        Some((app, version)) => st
            .store
            .bundle_by_version(&acct, app, version)
            .await?
            .ok_or_else(|| not_found("bundle", &d.bundle, "`keel apps list`"))?,
        None if d.bundle.is_empty() => {
            return Err(ApiError::bad_request("bad_bundle", "bundle: give a bundle id or APP@VERSION"))
        }
        None => own_bundle(&st, &acct, &d.bundle).await?,
    };
    let (devices, via) = match (&d.device, &d.tag) {
        (Some(dev), None) => (vec![own_device(&st, &acct, dev).await?.id], "device".to_string()),
        (None, Some(tag)) => {
            if !valid_tag(tag) {
                return Err(ApiError::bad_request("bad_tags", "tag: 1..64 characters of a-z A-Z 0-9 - _ . :"));
            }
            let ids: Vec<String> =
                st.store.devices(&acct).await?.into_iter().filter(|x| x.tags.contains(tag)).map(|x| x.id).collect();
            if ids.is_empty() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no device in your account has tag '{tag}' (`keel devices --tag {tag}`)"),
                ));
            }
            (ids, format!("tag:{tag}"))
        }
        _ => return Err(ApiError::bad_request("bad_target", "give exactly one of `device` and `tag`")),
    };
    if !d.force {
        let keys = st.store.signer_keys(&acct).await?;
        if let Some(k) = keys.iter().find(|k| k.id == bundle.signer_key_id && k.revoked_at.is_some()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "signer_revoked",
                format!(
                    "bundle {} was signed with signer key {} ({}), which has been revoked: deploy a bundle signed \
                     with a current key, or deploy with force (`keel deploy --force`) if you trust this one",
                    bundle.id, k.id, k.name
                ),
            ));
        }
    }
    st.store.deploy(&bundle, &devices, &via).await?;
    tracing::info!(bundle = %bundle.id, %via, devices = devices.len(), "deployment");
    Ok(Json(DeploymentJson { bundle: bundle.into(), via, devices }))
}

/// One entry of a device's update history.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq, Eq)]
pub struct UpdateEventJson {
    /// When, µs since the epoch.
    pub at_us: i64,
    /// A state the device reported (`downloading`, `confirmed`, `refused`, `error`, ...) or a
    /// server step (`deployed`, `offered`, `cancelled`).
    pub state: String,
    /// The bundle sequence concerned.
    pub sequence: u64,
    /// What happened.
    pub text: String,
}

impl From<UpdateEvent> for UpdateEventJson {
    fn from(e: UpdateEvent) -> Self {
        UpdateEventJson { at_us: e.at, state: e.state, sequence: e.sequence, text: e.text }
    }
}

/// Query of the update events endpoint.
#[derive(Deserialize, IntoParams)]
pub struct EventsQuery {
    /// The most recent this many (default 100, max 1000).
    pub limit: Option<u32>,
}

/// A device's update history (deployments, offers and the states it reported), oldest first.
#[utoipa::path(get, path = "/v1/devices/{id}/update-events", tag = "updates",
    params(("id" = String, Path, description = "Device id"), EventsQuery),
    responses((status = 200, body = Vec<UpdateEventJson>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn device_update_events(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<UpdateEventJson>>, ApiError> {
    let acct = auth.account;
    let d = own_device(&st, &acct, &id).await?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(st.store.update_events(&d.id, limit).await?.into_iter().map(Into::into).collect()))
}
