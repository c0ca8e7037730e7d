//! The Postgres door's connection-level statements: `SET`/`SHOW`/`RESET`/... and
//! `COPY ... TO STDOUT` with its options, with `SET` values checked as `SET` applies them
//! (`statement_timeout`, `lock_timeout`, `extra_float_digits`, ...). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = medlake_pgwire::fuzzing::statement(text);
    // The same bytes as the value of each numeric setting, and after COPY.
    for setting in ["statement_timeout", "lock_timeout", "extra_float_digits"] {
        let _ = medlake_pgwire::fuzzing::statement(&format!("SET {setting} = '{text}'"));
    }
    let _ = medlake_pgwire::fuzzing::statement(&format!("COPY (SELECT 1) TO STDOUT {text}"));
    let _ = medlake_pgwire::fuzzing::statement(&format!("COPY {text}"));
});
