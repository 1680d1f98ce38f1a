//! Any text given as a configuration: a validated config or errors, never a panic, and
//! every error names a line and column inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = tandem_config::Config::parse(text, "fuzz.toml", std::path::Path::new("/nonexistent")) {
        let lines = text.lines().count().max(1);
        for line in errors.to_string().lines().filter(|l| l.starts_with("fuzz.toml:")) {
            let mut parts = line.splitn(4, ':');
            parts.next();
            let n: usize = parts.next().and_then(|l| l.parse().ok()).expect("a line number");
            assert!(n >= 1 && n <= lines + 1, "line {n} of {lines}: {line}");
        }
    }
});
