//! Deployments and update history.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::BundleJson;

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

/// Query of the update events endpoint.
#[derive(Serialize, Deserialize, IntoParams, Debug, Clone, Default)]
pub struct EventsQuery {
    /// The most recent this many (default 100, max 1000).
    pub limit: Option<u32>,
}
