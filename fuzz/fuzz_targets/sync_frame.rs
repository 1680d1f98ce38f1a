//! Sync frames: any body is refused without the key; any payload signed with the key
//! (what a peer with the key could send) decodes or is refused, never a panic; packed
//! entries (protocol version 2) unpack or are refused, never a panic, and what unpacks
//! packs and unpacks again to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_sync::codec::{Direction, FrameKey, Message, Packed, WireEntry, open, seal_payload};

/// Message::Packed's index: the input as a packed message's body.
const PACKED: u8 = 8;

fuzz_target!(|data: &[u8]| {
    let key = FrameKey::from_secret(b"fuzzing key of sixteen bytes or more");
    assert!(open(&key, Direction::FromInitiator, 0, data).is_err(), "no frame passes without the key");
    let mut packed = vec![PACKED];
    packed.extend_from_slice(data);
    for payload in [data, &packed[..]] {
        let frame = seal_payload(&key, Direction::FromInitiator, 7, payload);
        if let Ok(Message::Packed { entries, .. }) = open(&key, Direction::FromInitiator, 7, &frame[4..]) {
            if let Ok(list) = entries.unpack() {
                let again = Packed::pack(&list).unpack().expect("packed entries unpack");
                assert_eq!(sorted(again), sorted(list), "pack and unpack change nothing");
            }
        }
        assert!(open(&key, Direction::FromResponder, 7, &frame[4..]).is_err(), "a reflected frame is refused");
    }
});

fn sorted(mut entries: Vec<WireEntry>) -> Vec<WireEntry> {
    entries.sort_by(|a, b| {
        (&a.pool, a.client, a.backend, a.remaining_ms, a.pinned_at_ms, a.origin).cmp(&(
            &b.pool,
            b.client,
            b.backend,
            b.remaining_ms,
            b.pinned_at_ms,
            b.origin,
        ))
    });
    entries
}
