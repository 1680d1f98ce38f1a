//! Whatever a backend answers a send-expect check: a verdict, never a panic, and the
//! same verdict as for the answer cut at its first line.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use regex::Regex;
use tandem_health::judge_answer;

fn patterns() -> &'static [Regex] {
    static P: OnceLock<Vec<Regex>> = OnceLock::new();
    P.get_or_init(|| {
        ["^220 ", "^\\* OK", "^\\+OK", "(?i)ready$", "^SSH-2\\.0-"]
            .iter()
            .map(|p| Regex::new(p).unwrap())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for regex in patterns() {
        let verdict = judge_answer(data, regex);
        let first = match data.iter().position(|&b| b == b'\n') {
            Some(end) => &data[..end],
            None => data,
        };
        if first.len() <= tandem_health::MAX_LINE {
            assert_eq!(verdict.is_ok(), judge_answer(first, regex).is_ok());
        }
    }
});
