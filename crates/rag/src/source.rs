//! Reading documents to ingest: text, Markdown and HTML files (directories recursed) and JSONL
//! records (`{"id", "text", "metadata"?}`). Everything is read and checked before the index is
//! touched, so bad input leaves the knowledge base as it was.
//!
//! Document ids: a file's path relative to the root it was found under (the directory given on
//! the command line; for a file given directly, its parent), with `/` separators — so ingesting
//! the same folder again from anywhere gives the same ids. JSONL records use their `id`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{RagError, Result};
use crate::html::html_to_text;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    Text,
    Markdown,
    Html,
    Jsonl,
}

impl DocKind {
    /// The kind a file name implies; `None` for files ingest does not read.
    pub fn of_path(path: &Path) -> Option<DocKind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "txt" | "text" => DocKind::Text,
            "md" | "markdown" => DocKind::Markdown,
            "html" | "htm" => DocKind::Html,
            "jsonl" => DocKind::Jsonl,
            _ => return None,
        })
    }
}

/// One document ready to chunk. `text` is what spans point into (for HTML, the extracted text).
#[derive(Debug, Clone)]
pub struct SourceDoc {
    pub id: String,
    /// Where it came from, for messages: `path` or `path:line`.
    pub origin: String,
    pub kind: DocKind,
    pub text: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// SHA-256 of kind, text and metadata: unchanged documents are skipped on re-ingest.
    pub hash: String,
}

impl SourceDoc {
    pub fn new(
        id: String,
        origin: String,
        kind: DocKind,
        text: String,
        metadata: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(format!("{kind:?}\0").as_bytes());
        h.update(text.as_bytes());
        h.update(b"\0");
        h.update(serde_json::Value::Object(metadata.clone()).to_string().as_bytes());
        let hash = hex::encode(h.finalize());
        Self { id, origin, kind, text, metadata, hash }
    }
}

/// What [`collect`] found: documents in a stable order, and files it passed over in directories.
#[derive(Debug, Default)]
pub struct Collected {
    pub docs: Vec<SourceDoc>,
    pub skipped_files: Vec<PathBuf>,
}

/// Reads every path (files, or directories recursed; hidden entries skipped). A file given
/// explicitly with an unknown extension is an error; inside a directory it is skipped and listed.
pub fn collect(paths: &[PathBuf]) -> Result<Collected> {
    let mut out = Collected::default();
    let mut seen: HashMap<String, String> = HashMap::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| RagError::io(p, e))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(p, &mut files)?;
            files.sort();
            for f in files {
                match DocKind::of_path(&f) {
                    Some(kind) => read_file(&f, p, kind, &mut out.docs)?,
                    None => out.skipped_files.push(f),
                }
            }
        } else {
            let kind = DocKind::of_path(p).ok_or_else(|| RagError::UnsupportedFile { path: p.clone() })?;
            let root = p.parent().unwrap_or(Path::new(""));
            read_file(p, root, kind, &mut out.docs)?;
        }
    }
    for d in &out.docs {
        if let Some(first) = seen.insert(d.id.clone(), d.origin.clone()) {
            return Err(RagError::DuplicateDocument { id: d.id.clone(), first, second: d.origin.clone() });
        }
    }
    Ok(out)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| RagError::io(dir, e))? {
        let entry = entry.map_err(|e| RagError::io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let ty = entry.file_type().map_err(|e| RagError::io(&path, e))?;
        if ty.is_dir() {
            walk(&path, files)?;
        } else if ty.is_file() || (ty.is_symlink() && path.is_file()) {
            files.push(path);
        }
    }
    Ok(())
}

fn relative_id(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| RagError::io(path, e))?;
    let mut s = String::from_utf8(bytes).map_err(|e| RagError::NotUtf8 {
        path: path.to_path_buf(),
        valid_up_to: e.utf8_error().valid_up_to(),
    })?;
    if s.starts_with('\u{feff}') {
        s.drain(..3);
    }
    Ok(s)
}

fn read_file(path: &Path, root: &Path, kind: DocKind, docs: &mut Vec<SourceDoc>) -> Result<()> {
    let text = read_text(path)?;
    let origin = path.display().to_string();
    match kind {
        DocKind::Jsonl => docs.extend(parse_jsonl(path, &text)?),
        DocKind::Html => docs.push(SourceDoc::new(
            relative_id(path, root),
            origin,
            kind,
            html_to_text(&text),
            Default::default(),
        )),
        DocKind::Text | DocKind::Markdown => {
            docs.push(SourceDoc::new(relative_id(path, root), origin, kind, text, Default::default()))
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct JsonlRecord {
    id: Option<serde_json::Value>,
    text: Option<serde_json::Value>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// Parses JSONL records; blank lines are allowed. Errors name the file and the 1-based line.
pub fn parse_jsonl(path: &Path, content: &str) -> Result<Vec<SourceDoc>> {
    let mut docs = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let rec: JsonlRecord = serde_json::from_str(line)
            .map_err(|e| RagError::record(path, n, format!("not a JSON object: {e}")))?;
        let id = match rec.id {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s,
            Some(serde_json::Value::Number(x)) => x.to_string(),
            Some(serde_json::Value::String(_)) => {
                return Err(RagError::record(path, n, "field `id` is empty"));
            }
            Some(_) => return Err(RagError::record(path, n, "field `id` must be a string or a number")),
            None => return Err(RagError::record(path, n, "missing field `id`")),
        };
        let text = match rec.text {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(RagError::record(path, n, "field `text` must be a string")),
            None => return Err(RagError::record(path, n, "missing field `text`")),
        };
        let metadata = match rec.metadata {
            None | Some(serde_json::Value::Null) => Default::default(),
            Some(serde_json::Value::Object(m)) => m,
            Some(_) => return Err(RagError::record(path, n, "field `metadata` must be an object")),
        };
        docs.push(SourceDoc::new(id, format!("{}:{n}", path.display()), DocKind::Jsonl, text, metadata));
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_errors_name_the_line_and_field() {
        let p = Path::new("kb.jsonl");
        let ok = "{\"id\": \"a\", \"text\": \"x\"}\n\n";
        let e =
            parse_jsonl(p, &format!("{ok}{{\"text\": \"y\"}}\n")).expect_err("invalid record").to_string();
        assert_eq!(e, "kb.jsonl:3: missing field `id`");
        let e = parse_jsonl(p, &format!("{ok}{{\"id\": \"b\"}}\n")).expect_err("invalid record").to_string();
        assert_eq!(e, "kb.jsonl:3: missing field `text`");
        let e = parse_jsonl(p, "{\"id\": \"b\", \"text\": 3}").expect_err("invalid record").to_string();
        assert_eq!(e, "kb.jsonl:1: field `text` must be a string");
        let e = parse_jsonl(p, "{\"id\": \"b\", \"text\": \"t\", \"metadata\": [1]}")
            .expect_err("invalid record")
            .to_string();
        assert_eq!(e, "kb.jsonl:1: field `metadata` must be an object");
        assert!(
            parse_jsonl(p, "{oops")
                .expect_err("invalid record")
                .to_string()
                .starts_with("kb.jsonl:1: not a JSON object")
        );
    }

    #[test]
    fn hash_changes_with_text_or_metadata_only() {
        let m = serde_json::Map::new();
        let a = SourceDoc::new("a".into(), "o".into(), DocKind::Text, "x".into(), m.clone());
        let b = SourceDoc::new("b".into(), "p".into(), DocKind::Text, "x".into(), m.clone());
        let c = SourceDoc::new("a".into(), "o".into(), DocKind::Text, "y".into(), m);
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }
}
