//! May a request be sent again after an attempt failed? One rule for both paths.
//!
//! RFC 9110 9.2.2: a request may be repeated automatically only if doing it twice is
//! the same as doing it once (an idempotent method), or if it surely was not done.
//! tandem sends a request again only when it still has all of it, and then:
//!
//! - when the connection to the backend could not be made ([`SendError::Connect`]):
//!   nothing reached a backend, so any request goes to another backend (up to the
//!   service's `retries`);
//! - when the connection was lost before a response head came ([`SendError::Lost`],
//!   typically a kept connection the backend closed while idle): only an idempotent
//!   request, once, on a new connection to the same backend. A non-idempotent request
//!   may have been done: it gets 502;
//! - never after `response_timeout` passed or the backend answered with something that
//!   is not HTTP (the backend is working on it, or broken).
//!
//! "All of it" is the head and the whole body: on the fast path a body read with the
//! head (and any body before a connect), on the general path an empty body, or one no
//! byte of which was read yet (a failed connect).

/// How an attempt to send a request to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No connection: nothing of the request reached the backend.
    Connect,
    /// The connection failed or closed before a response head came: the backend may
    /// have had the request.
    Lost,
    /// No response head within `response_timeout`.
    TimedOut,
    /// The backend's answer was not a usable HTTP response.
    Invalid,
}

impl SendError {
    /// What the client is told when the request is not sent again.
    pub fn cause(self) -> super::Cause {
        match self {
            SendError::Connect => super::Cause::Unreachable,
            SendError::Lost | SendError::Invalid => super::Cause::BadAnswer,
            SendError::TimedOut => super::Cause::TimedOut,
        }
    }
}

/// A method whose effect is the same done once or twice (RFC 9110 9.2.2).
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// Whether a request whose attempt failed with `error` may be sent again: `idempotent`
/// when its method is ([`is_idempotent`]), `whole` when tandem still has all of it (see
/// the module's rule).
pub fn may_send_again(idempotent: bool, whole: bool, error: SendError) -> bool {
    whole
        && match error {
            SendError::Connect => true,
            SendError::Lost => idempotent,
            SendError::TimedOut | SendError::Invalid => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_surely_was_not_done_or_may_be_done_twice_is_sent_again() {
        use SendError::*;
        // (method, whole, error) -> sent again?
        for (method, whole, error, again) in [
            ("POST", true, Connect, true),
            ("GET", true, Connect, true),
            ("POST", false, Connect, false),
            ("GET", true, Lost, true),
            ("PUT", true, Lost, true),
            ("DELETE", true, Lost, true),
            ("POST", true, Lost, false),
            ("PATCH", true, Lost, false),
            ("GET", false, Lost, false),
            ("GET", true, TimedOut, false),
            ("GET", true, Invalid, false),
            ("get", true, Lost, false),
        ] {
            assert_eq!(
                may_send_again(is_idempotent(method), whole, error),
                again,
                "{method} whole={whole} {error:?}"
            );
        }
        assert_eq!(Connect.cause(), crate::http::policy::Cause::Unreachable);
        assert_eq!(Lost.cause().refusal().status, 502);
        assert_eq!(TimedOut.cause().refusal().status, 504);
    }
}
