//! tandem's own answers: which status and text for a request no backend answered, and
//! the one body format of every answer tandem writes itself (refusals of the client's
//! errors included).

use super::Refusal;

/// Why no backend answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The pool (and its fallbacks) had no usable backend: nothing was tried.
    NoBackend,
    /// Every backend tried refused or did not take the connection in time.
    Unreachable,
    /// The backend did not start its response within `response_timeout`.
    TimedOut,
    /// The backend closed, failed or answered with something that is not HTTP.
    BadAnswer,
}

impl Cause {
    /// The status and text a client gets: 503, 502, 504, 502.
    pub fn refusal(self) -> Refusal {
        match self {
            Cause::NoBackend => Refusal {
                status: 503,
                why: "no backend is available",
            },
            Cause::Unreachable => Refusal {
                status: 502,
                why: "no backend could be reached",
            },
            Cause::TimedOut => Refusal {
                status: 504,
                why: "the backend did not answer in time",
            },
            Cause::BadAnswer => Refusal {
                status: 502,
                why: "the backend failed to answer",
            },
        }
    }
}

/// The fields of every answer of tandem's own, besides its length and Connection.
pub const ANSWER_FIELDS: [(&str, &str); 2] = [
    ("content-type", "text/plain; charset=utf-8"),
    ("cache-control", "no-store"),
];

/// The reason phrase of `status` (empty for a status without one).
pub fn reason(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// The body of an answer of tandem's own: `STATUS REASON`, then the text, a line each.
pub fn answer_body(refusal: Refusal) -> String {
    answer_text(refusal.status, refusal.why)
}

/// The body format of [`answer_body`] for any status and text.
pub fn answer_text(status: u16, text: &str) -> String {
    format!("{status} {}\n{text}\n", reason(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_has_its_status_and_text() {
        let got: Vec<(u16, String)> = [
            Cause::NoBackend,
            Cause::Unreachable,
            Cause::TimedOut,
            Cause::BadAnswer,
        ]
        .into_iter()
        .map(|c| (c.refusal().status, answer_body(c.refusal())))
        .collect();
        assert_eq!(
            got,
            [
                (
                    503,
                    "503 Service Unavailable\nno backend is available\n".into()
                ),
                (502, "502 Bad Gateway\nno backend could be reached\n".into()),
                (
                    504,
                    "504 Gateway Timeout\nthe backend did not answer in time\n".into()
                ),
                (
                    502,
                    "502 Bad Gateway\nthe backend failed to answer\n".into()
                ),
            ]
        );
        assert_eq!(
            answer_body(super::super::TOO_LARGE),
            "431 Request Header Fields Too Large\nrequest head too large\n"
        );
    }
}
