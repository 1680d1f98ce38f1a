//! tandem's data plane: the services that accept clients and relay them to backends.
//!
//! A [`Service`] accepts on listeners bound by `tandem_net::listener::bind` (re-exported
//! as [`listener`]), applies the node-wide and per-client [`limits`], optionally reads
//! the PROXY header of a trusted balancer in front ([`proxy_header::receive`]) and
//! terminates TLS ([`tls`], whose configurations come from `tandem_net::tls`). In tcp
//! mode it asks the current [`tandem_balance::PoolSet`] for a backend, connects with a
//! timeout and retries other backends on failure, optionally sends a PROXY protocol
//! header, then relays bytes both ways ([`relay`]: splice(2) on Linux, copies for TLS,
//! half-close propagated, idle timeout). In http mode it hands the connection to
//! [`http`]: the HTTP/1.1 fast path, or hyper's general path (HTTP/1.x, HTTP/2) behind
//! the [`framing`] watch, both judged by one request policy. Configuration and pools
//! enter through `arc-swap` handles that the daemon swaps on reload; what leaves is
//! counters ([`ServiceStats`], backend state) and one log line per connection (target
//! `tandem::conn`).

pub mod connections;
pub mod framing;
pub mod http;
pub mod limits;
pub mod proxy_header;
mod ratelog;
pub mod relay;
mod service;
pub mod spread;
pub mod tls;

pub use ratelog::RateLimited;
pub use service::{Lifecycle, Prepared, Service, ServiceStats};
/// Listening sockets (`tandem_net::listener`), re-exported for the daemon.
pub use tandem_net::listener;
