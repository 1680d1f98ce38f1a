//! Any IPv4 packet on the VRRP socket: kept or dropped with a reason, never a panic;
//! a kept advertisement encodes and decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_vrrp::Advertisement;
use tandem_vrrp::packet::decode_ipv4;

fuzz_target!(|data: &[u8]| {
    for pseudo in [true, false] {
        if let Ok(rx) = decode_ipv4(data, pseudo) {
            let again = rx.advertisement.encode(rx.source, rx.destination, pseudo);
            let back = Advertisement::decode(&again, rx.source, rx.destination, pseudo)
                .expect("what was kept re-encodes");
            assert_eq!(back, rx.advertisement);
        }
    }
});
