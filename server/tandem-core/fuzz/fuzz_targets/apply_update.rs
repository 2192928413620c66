//! Arbitrary updates and frames from several peers, mixed with real edits from per-peer yrs
//! replicas, mutations, syncs and leaves, through `SharedDoc::receive`: never a panic, a
//! poisoned doc reloads from the accepted updates, and those updates rebuild the same doc. The
//! input layout and the body are in `tandem_core::fuzzing` (`decode_ops`, `apply_updates`),
//! which proptest also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(
    init: tandem_core_fuzz_init(),
    |data: &[u8]| {
        tandem_core::fuzzing::apply_updates(data);
    }
);

/// See `decode_frame.rs`: caught yrs panics are expected unless `TANDEM_FUZZ_CAUGHT_PANICS=abort`.
fn tandem_core_fuzz_init() {
    if std::env::var("TANDEM_FUZZ_CAUGHT_PANICS").as_deref() != Ok("abort") {
        std::panic::set_hook(Box::new(|_| {}));
    }
}
