//! Listening sockets and TLS configurations, below both tandem's data plane and its
//! health checks.
//!
//! [`listener::bind`] opens a listening socket, a service's or the admin port's
//! (SO_REUSEADDR, IP_FREEBIND, one [`listener::BACKLOG`]). [`tls::acceptor`] builds the server side of TLS from a
//! service's `tls` table (certificates read from PEM files now, chosen by SNI, the
//! server's cipher order, in-memory resumption); [`tls::client_config`] the client
//! side towards backends (a CA file, or any certificate). Configuration enters as
//! `tandem_config` types and paths; sockets and `rustls` configurations leave, or a
//! [`tls::TlsError`] that names the file at fault. This crate accepts, relays and
//! checks nothing: that is `tandem-proxy`'s work (which binds listeners and terminates
//! TLS) and `tandem-health`'s (whose TLS checks use the client side), and neither needs
//! the other for what is here. [`acme`] holds what ACME issued and the challenges
//! pending, which the acceptors and HTTP services answer; [`ocsp`] the OCSP responses
//! stapled.

pub mod acme;
pub mod listener;
pub mod ocsp;
pub mod tls;
