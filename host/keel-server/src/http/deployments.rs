//! Deployments and devices' update history.

use super::*;

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

impl From<UpdateEvent> for UpdateEventJson {
    fn from(e: UpdateEvent) -> Self {
        UpdateEventJson { at_us: e.at, state: e.state, sequence: e.sequence, text: e.text }
    }
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
