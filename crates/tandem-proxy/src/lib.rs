//! tandem's data plane: listeners and the TCP relay.
//!
//! A [`Service`] accepts on listeners bound by [`listener::bind`] (SO_REUSEADDR,
//! IP_FREEBIND), optionally reads the PROXY header of a trusted balancer in front
//! ([`proxy_header::receive`]) and terminates TLS ([`tls`]), asks the current
//! [`tandem_balance::PoolSet`] for a backend, connects with a timeout and retries other
//! backends on failure, optionally sends a PROXY protocol header, then relays bytes
//! both ways ([`relay`]: splice(2) on Linux, copies for TLS, half-close propagated,
//! idle timeout). Configuration and pools enter through
//! `arc-swap` handles that the daemon swaps on reload; what leaves is counters
//! ([`ServiceStats`], backend state) and one log line per connection (target
//! `tandem::conn`).

pub mod framing;
pub mod http;
pub mod limits;
pub mod proxy_header;
mod ratelog;
pub mod relay;
mod service;
pub mod tls;

pub use ratelog::RateLimited;
pub use service::{Lifecycle, Prepared, Service, ServiceStats};
/// Listening sockets (`tandem_net::listener`), re-exported for the daemon.
pub use tandem_net::listener;
