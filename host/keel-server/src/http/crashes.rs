//! Crash dumps of a device (see [`crate::crash`]): the list, and one with its registers and
//! stack, for post-mortem debugging.

use super::*;
use crate::crash::{kind_name, Crash};

impl From<Crash> for CrashJson {
    fn from(c: Crash) -> Self {
        let i = c.info;
        CrashJson {
            id: c.id,
            received_at_us: c.received_at,
            device_time_us: c.device_time_us,
            seq: c.seq,
            kind: kind_name(i.kind),
            kind_code: i.kind,
            pc: i.pc,
            lr: i.lr,
            sp: i.sp,
            app_name: c.app.as_ref().map(|a| a.0.clone()),
            app_version: c.app.map(|a| a.1),
            stack_bytes: c.stack.len() as u32,
            xpsr: i.xpsr,
            cfsr: i.cfsr,
            hfsr: i.hfsr,
            sfsr: i.sfsr,
            bfar: i.bfar,
            exc_return: i.exc_return,
            regs: c.regs.map(|r| r.to_vec()),
            stack_base: i.sp,
            stack_hex: crate::hex(&c.stack),
        }
    }
}

/// List a device's crash dumps, newest first (the server keeps the newest 20 per device).
#[utoipa::path(get, path = "/v1/devices/{id}/crashes", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, body = Vec<CrashSummaryJson>), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(super) async fn list_crashes(
    State(st): State<AppState>,
    auth: Account,
    Path(id): Path<String>,
) -> Result<Json<Vec<CrashSummaryJson>>, ApiError> {
    let acct = auth.account;
    let d = own_device(&st, &acct, &id).await?;
    let crashes = st.store.crashes(&acct, &d.id).await?;
    Ok(Json(crashes.into_iter().map(|c| CrashJson::from(c).summary()).collect()))
}

/// Show one crash dump: fault registers, r0..r12 (once they arrived) and the app's stack from
/// `sp` (`stack_hex`, as far as it arrived).
#[utoipa::path(get, path = "/v1/devices/{id}/crashes/{crash_id}", tag = "devices",
    params(("id" = String, Path, description = "Device id"), ("crash_id" = String, Path, description = "Crash id")),
    responses((status = 200, body = CrashJson), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show_crash(
    State(st): State<AppState>,
    auth: Account,
    Path((id, crash_id)): Path<(String, String)>,
) -> Result<Json<CrashJson>, ApiError> {
    let acct = auth.account;
    let d = own_device(&st, &acct, &id).await?;
    match st.store.crash(&acct, &d.id, &crash_id).await? {
        Some(c) => Ok(Json(c.into())),
        None => Err(not_found("crash", &crash_id, &format!("`GET /v1/devices/{}/crashes` lists them", d.id))),
    }
}
