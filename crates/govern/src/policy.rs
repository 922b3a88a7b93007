//! Release policy: `$FERROTUNE_HOME/policy.toml` (or `--policy FILE`).
//!
//! ```toml
//! [alias.champion]
//! approvers = 1                      # approvals by users other than the requester
//! gates = ["rougeL:0.01"]            # METRIC[:TOLERANCE], as `eval --fail-if-worse`
//! gate_data = "examples/support/eval.jsonl"   # the evaluation data the gates read (path or SHA-256)
//!
//! [alias."*"]                        # every other alias
//! approvers = 0
//! ```
//! Without a file: `champion` needs one approval by someone other than the requester and no
//! gate; every other alias moves when asked.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AliasRule {
    #[serde(default)]
    pub approvers: u32,
    #[serde(default)]
    pub gates: Vec<String>,
    #[serde(default)]
    pub gate_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub alias: std::collections::BTreeMap<String, AliasRule>,
}
