//! Rows → the admission rules' [`PortalSnapshot`].

use std::str::FromStr;

use crate::admission::model::{
    BlockReason, Extension, Licence, PlanLimits, PlanLimitsTable, PortalId, PortalSnapshot, PortalStatus,
};

use super::{ExtensionRow, LicenceRow, PlanRow, PortalRow, StoreError, from_ts};

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn limits(row: Option<&PlanRow>) -> PlanLimits {
    // A plan missing from the table (cannot happen through the CLI: licences
    // reference plans) gets no users, no calls: fail closed.
    match row {
        Some(p) => PlanLimits {
            max_users: p.max_users.map(to_u32),
            max_cps: p.max_cps.map(to_u32),
            included_channels: to_u32(p.included_channels),
        },
        None => PlanLimits { max_users: Some(0), max_cps: Some(0), included_channels: 0 },
    }
}

/// Builds the snapshot from the rows of one portal.
pub(super) fn build(
    portal: PortalRow,
    licence: Option<LicenceRow>,
    extensions: &[ExtensionRow],
    plans: &[PlanRow],
) -> Result<PortalSnapshot, StoreError> {
    let status = match portal.status.as_str() {
        "blocked" => {
            let reason = portal.block_reason.as_deref().unwrap_or("manual");
            PortalStatus::Blocked(
                BlockReason::from_str(reason)
                    .map_err(|e| StoreError::Invalid { field: "block_reason", detail: e.to_string() })?,
            )
        }
        other => {
            PortalStatus::from_str(other).map_err(|e| StoreError::Invalid { field: "status", detail: e.to_string() })?
        }
    };
    let licence = match licence {
        Some(l) => l.to_model()?,
        None => Licence::free(),
    };
    let licensed = limits(plans.iter().find(|p| p.name == licence.plan.as_str()));
    let free = limits(plans.iter().find(|p| p.name == "free"));
    Ok(PortalSnapshot {
        id: PortalId::new(portal.id),
        domain: portal.domain,
        status,
        created_at: from_ts(portal.created_at),
        last_activity_at: portal.last_activity_at.map(from_ts),
        allow_extranet_calls: portal.allow_extranet_calls,
        max_cps_override: portal.max_cps_override.map(to_u32),
        licence,
        extensions: extensions
            .iter()
            .map(|e| Extension {
                channels: to_u32(e.channels),
                valid_from: from_ts(e.valid_from),
                valid_until: from_ts(e.valid_until),
            })
            .collect(),
        limits: PlanLimitsTable { licensed, free },
        max_call_duration_s: to_u32(portal.max_call_duration_s),
    })
}
