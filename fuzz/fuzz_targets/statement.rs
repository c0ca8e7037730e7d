//! The engine's statement parser (`medlake_engine::parse`: the script splitter, medlake's
//! own statements, then DataFusion's parser and our rewrites). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = medlake_engine::parse(text);
    let _ = medlake_engine::ends_statement(text);
});
