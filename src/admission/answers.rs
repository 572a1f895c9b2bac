//! The SIP answer to each refusal reason: the one place where a refusal's
//! status code, its `Retry-After` and its `Warning` text are chosen
//! (DESIGN.md, "Admission order and answers": the codes of the table are
//! defaults, `[admission.answers]` overrides them per reason).

use std::fmt;

use crate::admission::decision::{Reason, Refusal};

/// Why a status code cannot answer a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not a 4xx, 5xx or 6xx final response: a refusal must be a failure.
    /// Pick a code in 400..=699.
    #[error("{status} is not a refusal: the code must be between 400 and 699")]
    NotAFailure {
        /// The code asked for.
        status: u16,
    },
    /// 401 and 407 are challenges: without a `WWW-Authenticate` or
    /// `Proxy-Authenticate` header they break the peer's stack. Pick 403.
    #[error("{status} is a challenge and needs an authenticate header; use 403 to refuse")]
    Challenge {
        /// The code asked for.
        status: u16,
    },
}

/// Checks that `status` may answer a refused call: 400..=699, and not one
/// of the challenges 401 and 407.
pub fn check_refusal_status(status: u16) -> Result<(), AnswerError> {
    match status {
        401 | 407 => Err(AnswerError::Challenge { status }),
        400..=699 => Ok(()),
        _ => Err(AnswerError::NotAFailure { status }),
    }
}

/// What a refused call's peer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The final response's status code.
    pub status: u16,
    /// Whether the response carries `Retry-After` (the PBX fails over to
    /// another node).
    pub retry_after: bool,
    /// The text of `Warning: 399 <host> "<text>"`, already safe to quote
    /// (see [`Refusal::warning_text`]).
    pub warning: String,
}

/// The status code answered for each refusal reason: the defaults of
/// DESIGN.md's table, overridden per reason by `[admission.answers]`.
///
/// Every refusal goes through [`RefusalAnswers::answer`] (or
/// [`RefusalAnswers::answer_refusal`]): no other code picks a refusal's
/// status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalAnswers {
    /// Indexed by [`Reason`] (declaration order, the same as [`Reason::ALL`]).
    status: [u16; Reason::ALL.len()],
}

impl RefusalAnswers {
    /// DESIGN.md's table.
    pub const DEFAULT: Self = {
        let mut status = [0; Reason::ALL.len()];
        let mut i = 0;
        while i < Reason::ALL.len() {
            status[i] = Self::default_status(Reason::ALL[i]);
            i += 1;
        }
        Self { status }
    };

    /// The status DESIGN.md's table gives `reason`.
    pub const fn default_status(reason: Reason) -> u16 {
        match reason {
            Reason::UnknownTrunk
            | Reason::PortalNotFound
            | Reason::PortalDeleted
            | Reason::PortalBlocked
            | Reason::LicenceExpired
            | Reason::NotLicensed
            | Reason::NotPermitted => 403,
            Reason::ChannelsBusy => 486,
            Reason::Overloaded | Reason::RateLimited | Reason::DatabaseUnavailable => 503,
            Reason::NoRoute => 404,
            Reason::Unavailable => 480,
        }
    }

    /// Whether a refusal for `reason` carries `Retry-After`: only for
    /// conditions of this node (`overloaded`, `database-unavailable`), so
    /// the PBX fails over to another one. A rate-limited portal is limited
    /// on every node, so retrying elsewhere would not help. Not
    /// configurable: it follows from what the reason means.
    pub const fn retry_after(reason: Reason) -> bool {
        matches!(reason, Reason::Overloaded | Reason::DatabaseUnavailable)
    }

    /// These answers with `reason` answered by `status` instead.
    pub fn with_status(mut self, reason: Reason, status: u16) -> Result<Self, AnswerError> {
        check_refusal_status(status)?;
        self.status[reason as usize] = status;
        Ok(self)
    }

    /// The status code and whether `Retry-After` is sent, for `reason`.
    #[must_use]
    pub fn answer(&self, reason: Reason) -> (u16, bool) {
        (self.status[reason as usize], Self::retry_after(reason))
    }

    /// The whole answer to `refusal`: status, `Retry-After`, Warning text.
    #[must_use]
    pub fn answer_refusal(&self, refusal: &Refusal) -> Answer {
        let (status, retry_after) = self.answer(refusal.reason);
        Answer { status, retry_after, warning: refusal.warning_text() }
    }

    /// Whether every reason gets its default.
    pub fn is_default(&self) -> bool {
        *self == Self::DEFAULT
    }
}

impl Default for RefusalAnswers {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for RefusalAnswers {
    /// `unknown-trunk 403, overloaded 503 (Retry-After), …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            let (status, retry) = self.answer(reason);
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{reason} {status}{}", if retry { " (Retry-After)" } else { "" })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_the_table_in_declaration_order() {
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "{reason}");
        }
    }

    #[test]
    fn defaults_are_design_md_table() {
        let answers = RefusalAnswers::default();
        let table = [
            (Reason::UnknownTrunk, 403, false),
            (Reason::Overloaded, 503, true),
            (Reason::PortalNotFound, 403, false),
            (Reason::PortalDeleted, 403, false),
            (Reason::PortalBlocked, 403, false),
            (Reason::LicenceExpired, 403, false),
            (Reason::NotLicensed, 403, false),
            (Reason::ChannelsBusy, 486, false),
            (Reason::RateLimited, 503, false),
            (Reason::NoRoute, 404, false),
            (Reason::Unavailable, 480, false),
            (Reason::NotPermitted, 403, false),
            (Reason::DatabaseUnavailable, 503, true),
        ];
        assert_eq!(table.len(), Reason::ALL.len());
        for (reason, status, retry) in table {
            assert_eq!(answers.answer(reason), (status, retry), "{reason}");
        }
        assert!(answers.is_default());
    }

    #[test]
    fn an_override_changes_only_its_reason() {
        let answers = RefusalAnswers::default().with_status(Reason::ChannelsBusy, 600).expect("valid");
        assert_eq!(answers.answer(Reason::ChannelsBusy), (600, false));
        for reason in Reason::ALL.into_iter().filter(|r| *r != Reason::ChannelsBusy) {
            assert_eq!(answers.answer(reason), RefusalAnswers::DEFAULT.answer(reason), "{reason}");
        }
        assert!(!answers.is_default());
        // Retry-After follows the reason, not the code.
        let answers = answers.with_status(Reason::Overloaded, 480).expect("valid");
        assert_eq!(answers.answer(Reason::Overloaded), (480, true));
    }

    #[test]
    fn only_failure_codes_that_are_no_challenge_are_accepted() {
        for ok in [400, 403, 404, 480, 486, 499, 500, 503, 599, 600, 603, 699] {
            assert_eq!(check_refusal_status(ok), Ok(()), "{ok}");
        }
        for bad in [0, 100, 180, 200, 302, 399, 700, 999] {
            assert_eq!(check_refusal_status(bad), Err(AnswerError::NotAFailure { status: bad }), "{bad}");
        }
        for challenge in [401, 407] {
            assert_eq!(check_refusal_status(challenge), Err(AnswerError::Challenge { status: challenge }));
        }
        let before = RefusalAnswers::default();
        assert!(before.with_status(Reason::NoRoute, 200).is_err());
    }

    #[test]
    fn answer_refusal_carries_the_quotable_warning_text() {
        let answers = RefusalAnswers::default().with_status(Reason::PortalDeleted, 404).expect("valid");
        let refusal = Refusal { reason: Reason::PortalDeleted, detail: "portal p1 (a\"b) is deleted".to_owned() };
        let answer = answers.answer_refusal(&refusal);
        assert_eq!(
            answer,
            Answer {
                status: 404,
                retry_after: false,
                warning: "portal-deleted: portal p1 (a'b) is deleted".to_owned()
            }
        );
    }

    #[test]
    fn display_lists_every_reason() {
        let text = RefusalAnswers::default().to_string();
        assert!(text.starts_with("unknown-trunk 403, overloaded 503 (Retry-After), portal-not-found 403"), "{text}");
        assert!(text.ends_with("database-unavailable 503 (Retry-After)"), "{text}");
    }
}
