//! The HTTP framing watch on client bytes: never a panic, and the same verdicts however
//! the bytes are split across reads.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tandem_proxy::framing::{Sniffer, Verdicts};

fn verdicts(chunks: &[&[u8]]) -> Vec<Option<&'static str>> {
    let mut s = Sniffer::new(tokio::io::empty(), Arc::new(Verdicts::default()));
    for c in chunks {
        s.observe(c);
    }
    s.take_verdicts()
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
