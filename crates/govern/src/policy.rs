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
//! gate; every other alias moves when asked. A table that leaves `approvers` out keeps that
//! built-in count (`[alias.champion]` with only gates still needs one approval).

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

use std::path::{Path, PathBuf};

use crate::error::{GovernError, Result};

/// The alias the built-in policy guards.
pub const CHAMPION: &str = "champion";

/// One parsed gate: `METRIC[:TOLERANCE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub metric: String,
    /// How much worse than the reference the candidate may be (in the metric's own units).
    pub tolerance: f64,
}

impl std::str::FromStr for Gate {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (metric, tol) = match s.rsplit_once(':') {
            Some((m, t)) => (m.trim(), Some(t.trim())),
            None => (s.trim(), None),
        };
        if metric.is_empty() {
            return Err(format!("`{s}`: no metric name (expected METRIC[:TOLERANCE], e.g. rougeL:0.01)"));
        }
        let tolerance = match tol {
            None => 0.0,
            Some(t) => t.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| {
                format!("`{s}`: tolerance `{t}` is not a non-negative number (expected METRIC[:TOLERANCE], e.g. rougeL:0.01)")
            })?,
        };
        Ok(Gate { metric: metric.to_string(), tolerance })
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tolerance == 0.0 {
            write!(f, "{}", self.metric)
        } else {
            write!(f, "{}:{}", self.metric, self.tolerance)
        }
    }
}

impl AliasRule {
    /// The gates, parsed (validated when the policy was loaded; a rule built in code that holds a
    /// bad entry is reported here).
    pub fn parsed_gates(&self) -> Result<Vec<Gate>> {
        self.gates
            .iter()
            .map(|g| g.parse().map_err(|reason| GovernError::Invalid { field: "gates", reason }))
            .collect()
    }
}

impl Default for Policy {
    /// `champion` needs one approval by someone other than the requester and no gate; every
    /// other alias moves when asked.
    fn default() -> Self {
        let mut alias = std::collections::BTreeMap::new();
        alias.insert(CHAMPION.to_string(), AliasRule { approvers: 1, ..AliasRule::default() });
        Policy { alias }
    }
}

fn bad(path: &Path, field: impl Into<String>, reason: impl Into<String>) -> GovernError {
    GovernError::BadFile { path: path.into(), field: field.into(), reason: reason.into() }
}

/// Line and column (1-based) of a byte offset, for TOML syntax errors.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Policy {
    /// `None`: `$FERROTUNE_HOME/policy.toml` when it exists, else the built-in policy.
    /// `Some(path)`: that file, which must exist.
    pub fn load(path: Option<&Path>) -> Result<Policy> {
        let path: PathBuf = match path {
            Some(p) => p.into(),
            None => {
                let p = ferrotune_model::store::home().join("policy.toml");
                if !p.exists() {
                    return Ok(Policy::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|source| GovernError::Io { path: path.clone(), error: source })?;
        Policy::parse(&text, &path)
    }

    /// Parse and validate a policy file's text (`path` names it in errors). Every error names the
    /// field (`alias.champion.gates[0]`), not only the line.
    pub fn parse(text: &str, path: &Path) -> Result<Policy> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let field = e.span().map_or_else(
                || "toml".to_string(),
                |s| {
                    let (l, c) = line_col(text, s.start);
                    format!("line {l}, column {c}")
                },
            );
            bad(path, field, e.message().trim())
        })?;
        let mut policy = Policy { alias: Default::default() };
        for (key, value) in &table {
            if key != "alias" {
                return Err(bad(path, key, "unknown section (expected [alias.NAME] tables)"));
            }
            let toml::Value::Table(aliases) = value else {
                return Err(bad(path, "alias", "expected tables [alias.NAME]"));
            };
            for (name, rule) in aliases {
                let field = |f: &str| format!("alias.{name}{f}");
                if name != "*" {
                    crate::registry::check_alias(name).map_err(|e| bad(path, field(""), e.to_string()))?;
                }
                let toml::Value::Table(rule) = rule else {
                    return Err(bad(path, field(""), "expected a table (approvers, gates, gate_data)"));
                };
                // A key left out keeps the built-in rule's value: `[alias.champion]` with gates
                // only still needs champion's one approval.
                let mut r = Policy::default().alias.get(name.as_str()).cloned().unwrap_or_default();
                for (k, v) in rule {
                    match (k.as_str(), v) {
                        ("approvers", toml::Value::Integer(n)) => {
                            r.approvers = u32::try_from(*n).map_err(|_| {
                                bad(path, field(".approvers"), format!("{n}: expected a count of 0 or more"))
                            })?;
                        }
                        ("approvers", _) => {
                            return Err(bad(
                                path,
                                field(".approvers"),
                                "expected a whole number of approvals",
                            ));
                        }
                        ("gates", toml::Value::Array(gates)) => {
                            for (i, g) in gates.iter().enumerate() {
                                let f = field(&format!(".gates[{i}]"));
                                let toml::Value::String(g) = g else {
                                    return Err(bad(path, f, "expected a string METRIC[:TOLERANCE]"));
                                };
                                g.parse::<Gate>().map_err(|reason| bad(path, f, reason))?;
                                r.gates.push(g.clone());
                            }
                        }
                        ("gates", _) => {
                            return Err(bad(
                                path,
                                field(".gates"),
                                "expected a list of \"METRIC[:TOLERANCE]\"",
                            ));
                        }
                        ("gate_data", toml::Value::String(s)) if !s.trim().is_empty() => {
                            r.gate_data = Some(s.clone())
                        }
                        ("gate_data", _) => {
                            return Err(bad(
                                path,
                                field(".gate_data"),
                                "expected the evaluation data's path or SHA-256",
                            ));
                        }
                        (other, _) => {
                            return Err(bad(
                                path,
                                field(&format!(".{other}")),
                                "unknown key (expected approvers, gates, gate_data)",
                            ));
                        }
                    }
                }
                if !r.gates.is_empty() && r.gate_data.is_none() {
                    return Err(bad(
                        path,
                        field(".gate_data"),
                        "required with gates: the evaluation data (path or SHA-256) whose recorded scores the gates compare",
                    ));
                }
                policy.alias.insert(name.clone(), r);
            }
        }
        Ok(policy)
    }

    /// The rule for `alias`: its own entry, else `"*"`, else the built-in one.
    pub fn rule(&self, alias: &str) -> AliasRule {
        self.alias
            .get(alias)
            .or_else(|| self.alias.get("*"))
            .cloned()
            .unwrap_or_else(|| Policy::default().alias.get(alias).cloned().unwrap_or_default())
    }
}
