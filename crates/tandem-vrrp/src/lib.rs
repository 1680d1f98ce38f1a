//! VRRPv3 (RFC 5798) for tandem's shared virtual addresses.
//!
//! [`packet`] encodes and decodes advertisements and checks them as section 7.1 asks,
//! naming a [`packet::DropReason`] for each dropped packet. [`machine`] is the state
//! machine of section 6.4: it takes `(now, input)` and returns actions, and is tested
//! with simulated time. [`linux`] is the thin IO around them: a raw IP socket for
//! protocol 112 (multicast 224.0.0.18 or unicast peers), virtual addresses added and
//! removed with rtnetlink, gratuitous ARP, the notify command. Data enters as raw
//! packets, timer ticks and priority changes; it leaves as packets, address changes
//! and a status that the daemon shows.

pub mod linux;
pub mod machine;
pub mod packet;

pub use machine::{Action, Input, Instance, Settings, State};
pub use packet::{Advertisement, Centis, DropReason};
