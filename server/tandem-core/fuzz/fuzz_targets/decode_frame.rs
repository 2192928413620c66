//! Any bytes as one WebSocket frame: `decode_frame` returns `Ok` or `Err`, and what it accepts is
//! handled by a `SharedDoc` without a panic. The body is `tandem_core::fuzzing::decode_frame`,
//! which proptest also runs on stable.

#![no_main]

libfuzzer_sys::fuzz_target!(
    init: tandem_core_fuzz_init(),
    |data: &[u8]| tandem_core::fuzzing::decode_frame(data)
);

/// yrs may panic on hostile input, and `SharedDoc` catches those panics by design (the doc is
/// reloaded). libfuzzer-sys's panic hook would abort on them anyway, so it is replaced by a
/// silent one unless `TANDEM_FUZZ_CAUGHT_PANICS=abort` asks to hunt yrs panics too. A panic that
/// escapes the body still aborts: libfuzzer-sys catches it around every run.
fn tandem_core_fuzz_init() {
    if std::env::var("TANDEM_FUZZ_CAUGHT_PANICS").as_deref() != Ok("abort") {
        std::panic::set_hook(Box::new(|_| {}));
    }
}
