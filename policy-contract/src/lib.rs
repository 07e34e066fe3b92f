//! The policy contract as plain Rust: what crosses the WIT boundary, in types
//! that neither the host nor a guest generated. Both sides depend on this
//! crate; neither depends on the other.
//!
//! The WIT packages themselves live in `wit/` beside this file, one folder per
//! released version (`policy@0.1.0`, `policy@0.2.0`); a released one is never
//! edited. `vectors/` holds the conformance cases of each version, which
//! [`vectors`] loads and judges.

pub mod call;
pub mod decisions;
pub mod gates;
pub mod model;
pub mod vectors;

pub use call::{Answer, Call};
pub use decisions::Decisions;

/// A released version of the WIT package `autodeploy:policy`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum WitVersion {
    #[serde(rename = "0.1.0")]
    V0_1_0,
    #[serde(rename = "0.2.0")]
    V0_2_0,
}

impl WitVersion {
    /// Every released version, oldest first.
    pub const ALL: [WitVersion; 2] = [WitVersion::V0_1_0, WitVersion::V0_2_0];
    /// The version new policies should implement.
    pub const LATEST: WitVersion = WitVersion::V0_2_0;

    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1_0 => "0.1.0",
            WitVersion::V0_2_0 => "0.2.0",
        }
    }

    /// The name under which a component exports this version's interface.
    pub fn interface(self) -> &'static str {
        match self {
            WitVersion::V0_1_0 => "autodeploy:policy/decisions@0.1.0",
            WitVersion::V0_2_0 => "autodeploy:policy/decisions@0.2.0",
        }
    }

    /// The version whose interface is exported under `name`, if any.
    pub fn from_interface(name: &str) -> Option<WitVersion> {
        WitVersion::ALL.into_iter().find(|v| v.interface() == name)
    }

    /// The functions the interface exports, in the WIT file's order.
    pub fn functions(self) -> &'static [&'static str] {
        match self {
            WitVersion::V0_1_0 => &[
                "policy-info",
                "parse-compose",
                "decide-commit",
                "decide-images",
                "check-auto-deploy",
                "check-deployable",
            ],
            WitVersion::V0_2_0 => &[
                "policy-info",
                "parse-compose",
                "watch-plan",
                "decide-commit",
                "decide-images",
                "check-auto-deploy",
                "check-deployable",
            ],
        }
    }
}

impl std::fmt::Display for WitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
