//! Whatever a client sends first on an `accept_proxy` service: a verdict, never a
//! panic; a header's length lies within the bytes; the verdict on a whole header does
//! not change when more bytes follow it; and an incomplete start stays incomplete (or
//! becomes a verdict) as bytes are added, never a header longer than what was read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proxy::proxy_header::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parsed::Header { len, addresses } => {
            assert!(len > 0 && len <= data.len(), "len {len} of {}", data.len());
            // The client's first bytes after the header do not change the header.
            assert_eq!(
                parse(&data[..len]),
                Parsed::Header { len, addresses },
                "the header alone reads differently"
            );
        }
        Parsed::Incomplete { need } => assert!(need > 0),
        Parsed::NotProxy | Parsed::Malformed(_) => {}
    }
});
