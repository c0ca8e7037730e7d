//! The Postgres startup packet: `options` (`-c name=value ...`) and each parameter
//! (`name`, `value`), checked as the connection applies them. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = medlake_pgwire::fuzzing::startup_options(text);
    // `name\0value`, as the startup packet carries parameters.
    let (name, value) = text.split_once('\0').unwrap_or(("statement_timeout", text));
    let _ = medlake_pgwire::fuzzing::startup_parameter(name, value);
    let _ = medlake_pgwire::fuzzing::startup_options(&format!("-c statement_timeout={text}"));
});
