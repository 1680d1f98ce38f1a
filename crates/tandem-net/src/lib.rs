//! The sockets and TLS configurations that tandem's data plane and its health checks
//! share.
//!
//! [`listener::bind`] opens a service's listening socket (SO_REUSEADDR, IP_FREEBIND,
//! one backlog for all). [`tls::acceptor`] builds the server side of TLS from a
//! service's `tls` table (certificates read from PEM files now, chosen by SNI, the
//! server's cipher order, in-memory resumption); [`tls::client_config`] the client
//! side towards backends (a CA file, or any certificate). Configuration enters as
//! `tandem_config` types and paths; sockets and `rustls` configurations leave, or a
//! [`tls::TlsError`] that names the file at fault. This crate accepts, relays and
//! checks nothing: that is `tandem-proxy`'s and `tandem-health`'s work, and neither
//! needs the other for what is here.

pub mod listener;
pub mod tls;
