//! Admission: the licensing rules of the SIP connector as pure functions
//! over a portal snapshot and an instant (DESIGN.md, "Licensing rules" and
//! "Admission order and answers").
//!
//! - [`model`]: portals, licences, extensions and plan limits, as the store
//!   loads them and the CLI edits them.
//! - [`rules`]: what is in force at an instant ([`licence_state`],
//!   [`portal_block`], [`channels_in_force`]) and the decisions built on it
//!   ([`decide`], or [`decide_licence`] then [`AwaitingChannel::decide`];
//!   [`may_register`], [`may_target`]).
//! - [`answers`]: the SIP answer to each refusal reason ([`RefusalAnswers`],
//!   defaults from DESIGN.md's table, overridden by `[admission.answers]`).
//! - [`decision`]: the decision's inputs ([`CallRequest`], [`Counters`]) and
//!   outputs ([`Decision`], [`Reason`], [`Refusal`], the trace).
//!
//! Nothing here reads the clock or does I/O: the caller passes `now` and
//! the fleet counters, so every expiry edge is a unit test (`tests.rs`).

pub mod answers;
pub mod decision;
pub mod model;
pub mod rules;

#[cfg(test)]
mod tests;

pub use answers::{Answer, AnswerError, RefusalAnswers, check_refusal_status};
pub use decision::{CallRequest, Check, CheckName, Counters, Decision, Outcome, Reason, Refusal, RegisterRefusal};
pub use model::{
    BlockReason, DEFAULT_GRACE_DAYS, ExpiryPolicy, Extension, Licence, MAX_GRACE_DAYS, MAX_PLAN_NAME_LEN, ModelError,
    Plan, PlanLimits, PlanLimitsTable, PortalId, PortalSnapshot, PortalStatus, UserInfo,
};
pub use rules::{
    AwaitingChannel, ChannelGrant, INACTIVITY_DAYS, LicencePhase, LicenceState, PortalBlock, channels_in_force, decide,
    decide_licence, decide_licence_untraced, licence_state, may_register, may_target, portal_block,
};
