//! The trunkgate SIP message module compiled on its own for fuzzing, plus
//! the checks both fuzz targets share.
//!
//! The module is included by path with the same `sip::message` nesting as
//! in the daemon, so it must stay self-contained: `super::` paths and the
//! `bytes`, `memchr` and `thiserror` crates only.

pub mod sip;

use sip::message::{CheckConfig, Contacts, Message, ParseError, Response, check_request, check_response, parse};

/// Runs every typed accessor and check on a parsed message, and asserts
/// that serialization is a fixed point: `to_bytes(parse(to_bytes(m)))`
/// equals `to_bytes(m)`.
pub fn exercise(msg: &Message) {
    let h = msg.headers();
    if let Ok(vias) = h.vias() {
        for v in vias {
            let _ = (v.branch(), v.rfc3261_branch(), v.received(), v.rport(), v.ttl());
            let _ = (v.host(), v.port(), v.transport(), v.params().iter().count());
        }
    }
    for na in [h.from(), h.to()].into_iter().flatten() {
        let _ = (na.tag(), na.display_name().map(|d| d.text().len()), na.uri().scheme().len());
    }
    if let Ok(Contacts::List(list)) = h.contacts() {
        for c in list {
            let _ = (c.expires(), c.q(), c.params().iter().count());
            if let Some(u) = c.uri().as_sip() {
                let _ = (u.user_decoded(), u.host(), u.port(), u.headers().count());
                u.params().iter().for_each(|p| drop(p.decoded_value()));
            }
        }
    }
    let _ = (h.routes(), h.record_routes(), h.diversions(), h.call_id(), h.cseq());
    let _ = (h.max_forwards(), h.content_length(), h.content_type(), h.expires());
    let _ = (h.require(), h.proxy_require(), h.supported(), h.unsupported(), h.allow());
    let _ = (h.authorization(), h.proxy_authorization(), h.www_authenticate());
    let _ = (h.proxy_authenticate(), h.accept(), h.warnings(), h.retry_after());
    match msg {
        Message::Request(r) => {
            let _ = r.validate();
            if let Err(rej) = check_request(r, &CheckConfig::default()) {
                let _ = rej.to_response(r, Some("fuzz"));
            }
            let _ = Response::from_request(r, 200, "OK").with_to_tag("t");
        }
        Message::Response(r) => {
            let _ = (r.validate(), check_response(r), r.reason_lossy());
        }
    }
    let first = msg.to_bytes();
    let again = parse(&first).expect("a serialized message parses");
    assert_eq!(first, again.to_bytes(), "serialization is not a fixed point");
}

/// What a transport does with a parse error: answer a bad request.
pub fn answer_error(e: &ParseError) {
    let _ = (e.reply_status(), e.reply_reason(), e.to_string());
    if let ParseError::BadRequest { headers, .. } = e {
        let _ = Response::from_headers(headers, 400, "Bad Request").to_bytes();
    }
}
