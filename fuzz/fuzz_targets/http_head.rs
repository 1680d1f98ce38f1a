//! The HTTP framing watch on client bytes: never a panic, and the same verdicts (and
//! the same point where a chunked body turns malformed) however the bytes are split
//! across reads.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tandem_proxy::framing::{Sniffer, Verdicts};
use tandem_proxy::http::policy::Refusal;

/// The verdicts, and whether the watch failed the connection's reads.
fn verdicts(chunks: &[&[u8]]) -> (Vec<Option<Refusal>>, bool) {
    let mut s = Sniffer::new(tokio::io::empty(), Arc::new(Verdicts::default()));
    let mut going = true;
    for c in chunks {
        going = s.observe(c) && going;
    }
    (s.take_verdicts(), going)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let whole = verdicts(&[bytes]);
    let step = usize::from(split).max(1);
    let chunks: Vec<&[u8]> = bytes.chunks(step).collect();
    assert_eq!(whole, verdicts(&chunks), "split every {step} bytes");
});
