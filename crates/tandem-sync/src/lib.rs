//! State sync between tandem nodes: what pfsync does for pf states and HAProxy's peers
//! protocol for stick tables, tandem does for its sticky tables.
//!
//! [`codec`] frames messages and authenticates every frame with HMAC-SHA256 (a shared
//! key, then a per-session key from both sides' nonces, with sequence numbers), so a
//! peer without the key, a replay or a tampered frame is refused. Each hello says the
//! protocol versions its node speaks and a session speaks the highest both do: version
//! 2 packs sticky entries ([`codec::Packed`]), version 1 (what earlier nodes speak, and
//! what a rolling upgrade meets) sends them whole. [`session`] is the
//! session logic without IO (hello exchange, sequencing, heartbeats, silence), tested
//! with simulated time. [`node`] runs it over TCP: a listener, a dialer per peer with
//! backoff, batching of local changes, bulk transfer on (re)connection. Entries enter
//! and leave through the [`node::Store`] that the daemon implements over its tables.

pub mod codec;
pub mod node;
pub mod session;

pub use codec::{Message, Packed, WireEntry};
pub use node::{Change, PeerStatus, Store, SyncNode, SyncSettings};
