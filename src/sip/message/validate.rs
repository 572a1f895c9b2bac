//! Structural validation of parsed messages (RFC 3261 §8.1.1, §8.2, §20).
//!
//! [`parse`](super::parse) only frames; these checks parse the headers a
//! transaction, dialog or registrar relies on and say precisely what is
//! wrong, for the reason phrase of a 400.

use super::error::HeaderError;
use super::header::HeaderName;
use super::method::Method;
use super::msg::{Request, Response};
use super::typed::Contacts;
use super::uri::Uri;

/// What makes a message unusable (a request gets `400 <this>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A header is missing, duplicated or malformed.
    #[error("{0}")]
    Header(#[from] HeaderError),
    /// The CSeq method differs from the request method (RFC 4475
    /// mismatch01/02). For an unknown method prefer 501.
    #[error("CSeq method {cseq_method} does not match {method}")]
    CSeqMethodMismatch {
        /// The Request-Line method.
        method: Method,
        /// The CSeq method.
        cseq_method: Method,
    },
    /// A non-empty body without Content-Type (RFC 3261 §20.15 MUST).
    #[error("Body without Content-Type")]
    BodyWithoutContentType,
    /// A REGISTER whose To is not a SIP or SIPS URI (RFC 3261 §10.2,
    /// RFC 4475 unksm2).
    #[error("REGISTER To must be a SIP or SIPS URI")]
    RegisterToNotSip,
    /// `Contact: *` in a request other than REGISTER.
    #[error("Contact * outside REGISTER")]
    StarContactOutsideRegister,
}

/// Headers every request must have (RFC 3261 §8.1.1 order; Max-Forwards
/// is optional for RFC 2543 peers).
const REQUIRED: [HeaderName; 5] =
    [HeaderName::To, HeaderName::From, HeaderName::CSeq, HeaderName::CallId, HeaderName::Via];

impl Request {
    /// Checks what every request must satisfy before any processing:
    /// required headers present once, Via (all values), From, To, Call-ID,
    /// CSeq, Max-Forwards, Contact, Route, Record-Route, Content-Type and
    /// option-tag lists well-formed, body typed, REGISTER To a SIP URI and
    /// the CSeq method equal to the request method (checked last, so the
    /// caller can turn it into 501 for unknown methods).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let h = &self.headers;
        for name in REQUIRED {
            if !h.contains(&name) {
                return Err(HeaderError::Missing { name }.into());
            }
        }
        h.vias()?;
        h.from()?;
        let to = h.to()?;
        h.call_id()?;
        let cseq = h.cseq()?;
        h.max_forwards()?;
        if matches!(h.contacts()?, Contacts::Star) && self.method != Method::Register {
            return Err(ValidationError::StarContactOutsideRegister);
        }
        h.routes()?;
        h.record_routes()?;
        h.require()?;
        h.proxy_require()?;
        h.supported()?;
        let content_type = h.content_type()?;
        if !self.body.is_empty() && content_type.is_none() {
            return Err(ValidationError::BodyWithoutContentType);
        }
        if self.method == Method::Register && !matches!(to.uri(), Uri::Sip(_)) {
            return Err(ValidationError::RegisterToNotSip);
        }
        if cseq.method != self.method {
            return Err(ValidationError::CSeqMethodMismatch { method: self.method.clone(), cseq_method: cseq.method });
        }
        Ok(())
    }
}

impl Response {
    /// Checks what a response must satisfy to be matched to a transaction:
    /// at least one well-formed Via, Call-ID and CSeq, and one From and one
    /// To whose parts and parameters are well-formed. Their URIs are not
    /// parsed: a response is matched on its tags alone (RFC 3261 §17.1.3,
    /// §12.2.1.2), nothing reads its From or To URI, and parsing both was
    /// 2 % of a call's instructions; the tags found are remembered for the
    /// matching.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_counting_vias().map(|_| ())
    }

    /// [`Response::validate`], giving the number of Via values (a UAC
    /// discards a response with more than one): the Vias parsed once.
    pub(crate) fn validate_counting_vias(&self) -> Result<usize, ValidationError> {
        let h = &self.headers;
        if !h.contains(&HeaderName::Via) {
            return Err(HeaderError::Missing { name: HeaderName::Via }.into());
        }
        let vias = h.vias()?.len();
        h.from_tag()?;
        h.to_tag()?;
        h.call_id()?;
        h.cseq()?;
        Ok(vias)
    }
}
