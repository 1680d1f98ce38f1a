//! Whatever a backend answers a send-expect check: the answer's end is found or not
//! (never past the bytes), the same end for the answer alone, and a verdict, never
//! a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use regex::{Regex, RegexBuilder};
use tandem_health::{answer_end, judge_answer};

fn patterns() -> &'static [Regex] {
    static P: OnceLock<Vec<Regex>> = OnceLock::new();
    P.get_or_init(|| {
        ["^220 ", "^\\* OK", "^\\+OK", "(?i)ready$", "^SSH-2\\.0-", "^250-STARTTLS"]
            .iter()
            .map(|p| RegexBuilder::new(p).multi_line(true).build().unwrap())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for after_command in [false, true] {
        let answer = match answer_end(data, after_command) {
            Some(end) => {
                assert!(end <= data.len());
                assert_eq!(answer_end(&data[..end], after_command), Some(end));
                &data[..end]
            }
            None => data,
        };
        for regex in patterns() {
            let _ = judge_answer(answer, regex);
        }
    }
});
