//! Sync frames: any body is refused without the key; any payload signed with the key
//! (what a peer with the key could send) decodes or is refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_sync::codec::{Direction, FrameKey, open, seal_payload};

fuzz_target!(|data: &[u8]| {
    let key = FrameKey::from_secret(b"fuzzing key of sixteen bytes or more");
    assert!(open(&key, Direction::FromInitiator, 0, data).is_err(), "no frame passes without the key");
    let frame = seal_payload(&key, Direction::FromInitiator, 7, data);
    let _ = open(&key, Direction::FromInitiator, 7, &frame[4..]);
    assert!(open(&key, Direction::FromResponder, 7, &frame[4..]).is_err(), "a reflected frame is refused");
});
