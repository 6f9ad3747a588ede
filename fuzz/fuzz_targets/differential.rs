//! The differential oracle of `tests/differential.rs`, driven by libFuzzer: any input is an
//! inner body (with a two-byte header choosing how to ask, the caps and the frame cuts), run
//! through the layer and through the serde_json reference; they must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    let Some(case) = oracle::Case::from_fuzz_input(data) else {
        return;
    };
    if let Err(difference) = oracle::check(&case.body, &case.ends, case.exact, case.mode, &case.limits) {
        panic!(
            "{difference}\n{:?}\nbody: {:?}",
            case,
            String::from_utf8_lossy(&case.body)
        );
    }
});
