//! What the server knows of the registry between two polls: every artifact version, every alias
//! and every base model's file hashes, read in one go and then only looked up (no query per
//! request).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ferrotune_govern::{ArtifactRecord, Reference, Registry, Selector};

/// A registry version a request resolved to (as carried by [`crate::generation::Target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRef {
    /// The artifact row id.
    pub id: i64,
    pub name: String,
    pub version: u32,
}

impl VersionRef {
    pub fn of(a: &ArtifactRecord) -> Self {
        Self { id: a.id, name: a.name.clone(), version: a.version }
    }

    /// `support@3`: also the name the version is loaded under in the engine.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// A base model as the registry recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseRecord {
    pub name: String,
    /// Its files' SHA-256, sorted.
    pub sha256: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    /// The registry's generation these rows were read at (`None`: nothing read yet).
    pub generation: Option<i64>,
    /// name → version → record.
    artifacts: BTreeMap<String, BTreeMap<u32, Arc<ArtifactRecord>>>,
    /// name → alias → version.
    aliases: BTreeMap<String, BTreeMap<String, u32>>,
    models: HashMap<i64, BaseRecord>,
}

impl Snapshot {
    /// Read everything the server needs. `generation` is read first: a commit landing between
    /// the queries changes it, so the next poll reads again.
    pub fn read(reg: &Registry) -> ferrotune_govern::Result<Self> {
        let generation = reg.generation()?;
        let artifacts = reg.artifacts()?;
        let aliases = reg.aliases()?;
        let models = reg
            .models()?
            .into_iter()
            .map(|m| {
                let mut sha256: Vec<String> = m.files.iter().map(|f| f.sha256.to_ascii_lowercase()).collect();
                sha256.sort();
                (m.id, BaseRecord { name: m.name, sha256 })
            })
            .collect();
        Ok(Self::from_rows(Some(generation), artifacts, aliases, models))
    }

    pub fn from_rows(
        generation: Option<i64>,
        artifacts: Vec<ArtifactRecord>,
        aliases: Vec<(String, String, u32)>,
        models: HashMap<i64, BaseRecord>,
    ) -> Self {
        let mut by_name: BTreeMap<String, BTreeMap<u32, Arc<ArtifactRecord>>> = BTreeMap::new();
        for a in artifacts {
            by_name.entry(a.name.clone()).or_default().insert(a.version, Arc::new(a));
        }
        let mut alias_map: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
        for (name, alias, version) in aliases {
            alias_map.entry(name).or_default().insert(alias, version);
        }
        Self { generation, artifacts: by_name, aliases: alias_map, models }
    }

    /// `support` (through `default_alias`), `support@canary`, `support@3` → the version, disabled
    /// or not; `None` when it names nothing.
    pub fn resolve(&self, reference: &str, default_alias: &str) -> Option<&Arc<ArtifactRecord>> {
        let r: Reference = reference.parse().ok()?;
        let version = match &r.selector {
            Selector::Version(v) => *v,
            Selector::Default => *self.aliases.get(&r.name)?.get(default_alias)?,
            Selector::Alias(a) => *self.aliases.get(&r.name)?.get(a)?,
        };
        self.version(&r.name, version)
    }

    pub fn version(&self, name: &str, version: u32) -> Option<&Arc<ArtifactRecord>> {
        self.artifacts.get(name)?.get(&version)
    }

    pub fn base_model(&self, id: i64) -> Option<&BaseRecord> {
        self.models.get(&id)
    }

    /// The names a client may put in `model`, with the version each names now: `name` for an
    /// artifact with the default alias, and every `name@alias` — leaving out those pointing at a
    /// disabled version. Sorted.
    pub fn listing(&self, default_alias: &str) -> Vec<(String, VersionRef)> {
        let mut out = Vec::new();
        for (name, aliases) in &self.aliases {
            for (alias, &v) in aliases {
                let Some(a) = self.version(name, v).filter(|a| !a.disabled) else { continue };
                if alias == default_alias {
                    out.push((name.clone(), VersionRef::of(a)));
                }
                out.push((format!("{name}@{alias}"), VersionRef::of(a)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Alias moves between `self` (older) and `new`, for the log: (name@alias, from, to).
    pub fn alias_changes(&self, new: &Snapshot) -> Vec<(String, Option<u32>, Option<u32>)> {
        let flat = |s: &Snapshot| -> BTreeMap<String, u32> {
            s.aliases.iter().flat_map(|(n, m)| m.iter().map(move |(a, &v)| (format!("{n}@{a}"), v))).collect()
        };
        let (old, new) = (flat(self), flat(new));
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| {
                let (a, b) = (old.get(k).copied(), new.get(k).copied());
                (a != b).then(|| (k.clone(), a, b))
            })
            .collect()
    }
}

/// `support@3` (an engine adapter name the registry gave) → (`support`, 3).
pub fn parse_loaded_name(engine_name: &str) -> Option<(&str, u32)> {
    let (name, v) = engine_name.rsplit_once('@')?;
    Some((name, v.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrotune_govern::ArtifactKind;

    fn artifact(id: i64, name: &str, version: u32, disabled: bool) -> ArtifactRecord {
        ArtifactRecord {
            id,
            name: name.into(),
            version,
            kind: ArtifactKind::Adapter,
            path: format!("/a/{name}/{version}"),
            files: vec![],
            run: None,
            base_model: Some(1),
            created: String::new(),
            actor: "t".into(),
            disabled,
            disabled_reason: disabled.then(|| "bad".into()),
            aliases: vec![],
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot::from_rows(
            Some(1),
            vec![
                artifact(1, "support", 1, false),
                artifact(2, "support", 2, false),
                artifact(3, "support", 3, true),
            ],
            vec![
                ("support".into(), "champion".into(), 1),
                ("support".into(), "canary".into(), 2),
                ("support".into(), "old".into(), 3),
            ],
            HashMap::new(),
        )
    }

    #[test]
    fn references_resolve_through_the_default_alias_an_alias_or_a_version() {
        let s = snapshot();
        let v = |r: &str| s.resolve(r, "champion").map(|a| a.version);
        assert_eq!(v("support"), Some(1));
        assert_eq!(v("support@canary"), Some(2));
        assert_eq!(v("support@3"), Some(3), "a disabled version still resolves (the caller refuses it)");
        assert_eq!(v("support@9"), None);
        assert_eq!(v("support@nightly"), None);
        assert_eq!(v("other"), None);
        assert_eq!(s.resolve("support", "canary").map(|a| a.version), Some(2));
    }

    #[test]
    fn the_listing_has_names_with_the_default_alias_and_every_alias_but_no_disabled_target() {
        let names: Vec<String> = snapshot().listing("champion").into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["support", "support@canary", "support@champion"]);
    }

    #[test]
    fn alias_moves_are_reported_and_loaded_names_parse() {
        let old = snapshot();
        let new = Snapshot::from_rows(
            Some(2),
            vec![artifact(1, "support", 1, false), artifact(2, "support", 2, false)],
            vec![("support".into(), "champion".into(), 2), ("support".into(), "canary".into(), 2)],
            HashMap::new(),
        );
        assert_eq!(
            old.alias_changes(&new),
            vec![
                ("support@champion".to_string(), Some(1), Some(2)),
                ("support@old".to_string(), Some(3), None)
            ]
        );
        assert_eq!(parse_loaded_name("support@3"), Some(("support", 3)));
        assert_eq!(parse_loaded_name("support"), None);
        assert_eq!(parse_loaded_name("support@canary"), None);
    }
}
