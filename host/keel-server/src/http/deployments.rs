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
    let audience = crate::domain::deployments::Audience::from_parts(d.device, d.tag)?;
    let done = crate::domain::deployments::deploy(&st.store, &acct, &d.bundle, &audience, d.force).await?;
    Ok(Json(DeploymentJson { bundle: done.bundle.into(), via: done.via, devices: done.devices }))
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
