//! Builds the default policy guest for wasm32-unknown-unknown and turns it into
//! a component, so the daemon ships its policy inside the binary with no manual
//! step and no tool to install.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[cfg(feature = "precompiled-policy")]
#[path = "build/precompile.rs"]
mod precompile;

const GUEST_TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("host/ sits in the workspace");
    for watched in [
        "guest/src",
        "guest/Cargo.toml",
        "wit",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    // A target dir of its own: the outer cargo holds the lock on its own.
    let target_dir = workspace_target_dir(&out_dir).join("policy-guest");

    let mut cargo = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args([
            "build",
            "--release",
            "-p",
            "autodeploy-guest",
            "--target",
            GUEST_TARGET,
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags and wrappers meant for the host build (clippy, coverage) must
        // not leak into the wasm build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        // Every decision runs this code: optimize it fully. Set here rather
        // than in the workspace profile so the host's own build is unaffected.
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort");
    let status = cargo.status().expect("run cargo for the policy guest");
    if !status.success() {
        panic!(
            "building the policy guest failed; is the wasm target installed? \
             run `rustup target add {GUEST_TARGET}`"
        );
    }

    let module_path = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("autodeploy_guest.wasm");
    let module = std::fs::read(&module_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", module_path.display()));
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|enc| enc.validate(true).encode())
        .unwrap_or_else(|e| panic!("componentize the policy guest: {e:#}"));
    std::fs::write(out_dir.join("default-policy.wasm"), &component)
        .expect("write the default policy component");
    #[cfg(feature = "precompiled-policy")]
    precompile::bundled(&component, &out_dir);
}

/// The target directory this build runs in: the nearest ancestor of OUT_DIR
/// that cargo marked with CACHEDIR.TAG.
fn workspace_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .unwrap_or(out_dir)
        .to_path_buf()
}
