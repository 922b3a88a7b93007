//! Knowledge bases in `$FERROTUNE_HOME/kb/`: their documents, and a query box showing the hits
//! with their citations (document id and character span), as `ferrotune rag query` prints them.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use ferrotune_rag::{DocumentInfo, Hit, Mode};
use maud::{Markup, html};
use serde::Deserialize;

use crate::auth;
use crate::error::UiError;
use crate::layout::{num, page, seg};
use crate::state::{AppState, blocking};

/// Names of the knowledge bases (folders holding a `kb.json`).
fn names(st: &AppState) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(st.kb_root()) else { return Vec::new() };
    let mut v: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("kb.json").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

pub async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let st2 = st.clone();
    let kbs = blocking(move || {
        Ok(names(&st2)
            .into_iter()
            .map(|n| {
                let info = st2
                    .knowledge_base(&st2.kb_root().join(&n))
                    .map(|kb| (kb.documents().len(), kb.num_chunks(), kb.settings().embedder));
                (n, info.map_err(|e| e.to_string()))
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let body = html! {
        h1 { "Knowledge bases" }
        @if kbs.is_empty() {
            p { "None in " code { (st.kb_root().display()) } ": " code { "ferrotune rag ingest --kb NAME DOCS/" } " makes one." }
        } @else {
            table {
                thead { tr { th { "name" } th.n { "documents" } th.n { "chunks" } th { "embedder" } } }
                tbody { @for (n, info) in &kbs { tr {
                    td { a href={"/kb/" (seg(n))} { (n) } }
                    @match info {
                        Ok((d, c, e)) => { td.n { (d) } td.n { (c) } td { (e) } },
                        Err(e) => td.error colspan="3" { (e) },
                    }
                } } }
            }
        }
    };
    Ok(page("Knowledge bases", "/kb", viewer.as_ref(), body))
}

#[derive(Deserialize, Default)]
pub struct KbQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    k: Option<usize>,
    #[serde(default)]
    mode: Option<String>,
}

fn mode_of(s: &str) -> Result<Mode, UiError> {
    match s {
        "hybrid" => Ok(Mode::Hybrid),
        "bm25" => Ok(Mode::Bm25),
        "vector" => Ok(Mode::Vector),
        other => Err(UiError::BadRequest(format!("mode `{other}`: one of hybrid, bm25, vector"))),
    }
}

pub async fn show(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<KbQuery>,
) -> Result<Markup, UiError> {
    let viewer = auth::viewer(&st, &headers);
    let mode_name = q.mode.clone().unwrap_or_else(|| "hybrid".into());
    let mode = mode_of(&mode_name)?;
    let k = q.k.unwrap_or(5);
    if k == 0 {
        return Err(UiError::BadRequest("hits: from 1 to 1000".into()));
    }
    ferrotune_rag::kb::check_k(k)?;
    let st2 = st.clone();
    let n = name.clone();
    let question = q.q.trim().to_string();
    // A failed query (no embedder installed for vector search) is shown beside the box.
    type Hits = Option<Result<Vec<Hit>, String>>;
    let (docs, chunks, hits): (Vec<DocumentInfo>, usize, Hits) = blocking(move || {
        // Only a name the listing holds: never a path built from the request.
        if !names(&st2).contains(&n) {
            return Err(UiError::NotFound(format!("no knowledge base `{n}` in {}", st2.kb_root().display())));
        }
        let kb = st2.knowledge_base(&st2.kb_root().join(&n))?;
        let hits = (!question.is_empty()).then(|| kb.query(&question, k, mode).map_err(|e| e.to_string()));
        Ok((kb.documents(), kb.num_chunks(), hits))
    })
    .await?;
    let body = html! {
        h1 { "Knowledge base " (name) }
        p.muted { (docs.len()) " documents, " (chunks) " chunks." }
        h2 { "Query" }
        form.stack method="get" action={"/kb/" (seg(&name))} role="search" {
            label for="q" { "Question" }
            input #q type="search" name="q" value=(q.q) size="70";
            label for="k" { "Hits" }
            input #k type="number" name="k" min="1" max="1000" value=(k);
            label for="mode" { "Retrieval" }
            select #mode name="mode" {
                @for m in ["hybrid", "bm25", "vector"] { option value=(m) selected[m == mode_name] { (m) } }
            }
            p { button.primary type="submit" { "Search" } }
        }
        @match &hits {
            None => {},
            Some(Err(e)) => p.error role="alert" { (e) @if mode_name != "bm25" { " (bm25 needs no embedder)" } },
            Some(Ok(h)) if h.is_empty() => p { "No hits." },
            Some(Ok(h)) => {
                ol {
                    @for hit in h { li {
                        p { strong { (hit.doc_id) } " [" (hit.start_char) ", " (hit.end_char) ") · score " (num(hit.score))
                            @if let Some(r) = hit.bm25_rank { " · bm25 #" (r) } @if let Some(r) = hit.vector_rank { " · vector #" (r) } }
                        blockquote { (hit.text) }
                    } }
                }
            },
        }
        h2 { "Documents" }
        table {
            thead { tr { th { "id" } th { "kind" } th.n { "characters" } th.n { "chunks" } th { "from" } } }
            tbody { @for d in &docs { tr { td { (d.id) } td { (format!("{:?}", d.kind).to_lowercase()) } td.n { (d.chars) } td.n { (d.chunks) } td { (d.origin) } } } }
        }
    };
    Ok(page(&format!("Knowledge base {name}"), "/kb", viewer.as_ref(), body))
}
