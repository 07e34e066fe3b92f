// The engine settings that decide what compiled policy code looks like.
// host/build.rs includes this file too (`include!`), to precompile the
// bundled policy for exactly the engine the daemon builds at run time: any
// setting that changes the generated code belongs here, never in only one of
// the two. Plain comments only: an inner doc comment cannot be `include!`d.

/// A wasmtime configuration for policies. `fuel` turns on instruction
/// metering (the daemon always meters; the benchmark compares without).
/// The caller adds what does not change the code, such as the allocator.
pub fn policy_engine_config(fuel: bool) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true).consume_fuel(fuel);
    config
}
