//! Any bytes as one Hocuspocus frame: `hocuspocus::decode_client_frame` returns `Ok` or `Err`,
//! and an accepted document message is handled by a `SharedDoc` without a panic. The body is
//! `tandem_core::fuzzing::decode_hocuspocus_frame`, which proptest also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(
    init: tandem_core_fuzz_init(),
    |data: &[u8]| tandem_core::fuzzing::decode_hocuspocus_frame(data)
);

/// yrs may panic on hostile input, and `SharedDoc` catches those panics by design; see
/// `decode_frame.rs` for why the hook is silenced unless `TANDEM_FUZZ_CAUGHT_PANICS=abort`.
fn tandem_core_fuzz_init() {
    if std::env::var("TANDEM_FUZZ_CAUGHT_PANICS").as_deref() != Ok("abort") {
        std::panic::set_hook(Box::new(|_| {}));
    }
}
