//! Retrieval in the server: a chat request to a model or adapter with an attached knowledge base
//! (`[rag.attach]` in serve.toml), or one naming `"knowledge_base"` in its body, is grounded:
//! the last user message is the query, the best chunks that fit `rag.context_tokens` go into the
//! system message with an instruction to answer from them and cite them as `[n]`, and the
//! response carries `sources` (document id, char span, score) so clients can show citations.
//!
//! Order in the prompt: models use the start and the end of a long context best and the middle
//! worst ("lost in the middle", Liu et al. 2023), so ranks are laid out 1, 3, 5, … , 4, 2 — the
//! most relevant chunks at both ends.
//!
//! Retrieved text is untrusted (indirect prompt injection, OWASP LLM01): with
//! `[guards] retrieved_injection` on, each chunk that would go into the prompt is scored once;
//! under `block` a flagged chunk is left out and listed in `sources` as
//! `{"dropped": true, "reason": "prompt_injection"}` (no `index`: nothing cites it), under `log`
//! it stays, listed with `"flagged": true`.
//!
//! A knowledge base is opened once (on the blocking pool) and reloaded only when a change to it
//! has finished on disk (`KnowledgeBase::changed_on_disk`, one `stat`) — reading it costs
//! ~150 MB at 100k chunks. The reload runs on the blocking pool too, by the one request that
//! noticed the change; requests arriving meanwhile query the current snapshot (the knowledge
//! base swaps the new one in when it is complete), so no request waits on another's reload.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferrotune_guard::injection::InjectionDetector;
use ferrotune_guard::{GuardAction, GuardKind, GuardMode};
use ferrotune_model::{Message, Tokenizer};
use ferrotune_rag::{Hit, KnowledgeBase, Mode, kb_path};
use serde_json::Value;

use crate::auth::Caller;
use crate::config::RagConfig;
use crate::error::ApiError;
use crate::response::Source;

/// Open knowledge bases, shared by requests (each is `Send + Sync`; queries take `&self`).
pub struct Knowledge {
    cfg: RagConfig,
    /// Held only to look a name up or add it — never across opening or reloading.
    open: Mutex<HashMap<String, Arc<Slot>>>,
    reloads: AtomicU64,
}

/// One knowledge base: opened by the first request that needs it (others wait for that open
/// without holding a thread), then shared.
#[derive(Default)]
struct Slot {
    kb: tokio::sync::OnceCell<Arc<KnowledgeBase>>,
    reloading: AtomicBool,
}

/// Clears `reloading` however the reload ends (error, panic, the request dropped).
struct ReloadTurn(Arc<Slot>);

impl Drop for ReloadTurn {
    fn drop(&mut self) {
        self.0.reloading.store(false, Ordering::SeqCst);
    }
}

/// Logged in full; the client sees a generic 500.
fn internal(detail: String) -> ApiError {
    tracing::error!("{detail}");
    ApiError::Internal
}

/// What grounding added to a request.
pub struct Grounded {
    pub knowledge_base: String,
    /// `sources` of the response, the chunks the injection guard dropped last (`"index": null,
    /// "dropped": true`).
    pub sources: Vec<Source>,
    /// Document ids of the chunks put into the prompt, in rank order.
    pub used: Vec<String>,
    pub retrieval_secs: f64,
    /// What the retrieved-injection guard did, one action per flagged chunk.
    pub guards: Vec<GuardAction>,
}

impl Knowledge {
    pub fn new(cfg: RagConfig) -> Self {
        Self { cfg, open: Mutex::new(HashMap::new()), reloads: AtomicU64::new(0) }
    }

    /// Reloads done since start (a changed knowledge base costs one each).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::SeqCst)
    }

    fn mode(&self) -> Mode {
        match self.cfg.mode.as_str() {
            "bm25" => Mode::Bm25,
            "vector" => Mode::Vector,
            _ => Mode::Hybrid,
        }
    }

    /// The knowledge base a request uses: its own `knowledge_base` field, else the one attached
    /// to the model / adapter it names (the caller may already use that model). A base named in
    /// the body needs the key's `kbs` scope unless it is the one attached to the model: 403
    /// otherwise, before the name is looked at, so a key cannot probe which bases exist.
    /// `requested`: the body's `knowledge_base`, as sent.
    pub fn pick(
        &self,
        requested: Option<&Value>,
        model: &str,
        caller: &Caller,
    ) -> Result<Option<String>, ApiError> {
        let attached = self.cfg.attach.get(model);
        match requested {
            None | Some(Value::Null) => Ok(attached.cloned()),
            Some(Value::String(s)) if !s.is_empty() => {
                caller.check_kb(s, attached == Some(s))?;
                Ok(Some(s.clone()))
            }
            Some(_) => {
                Err(ApiError::field("knowledge_base", "must be the name of a knowledge base (a string)"))
            }
        }
    }

    async fn get(&self, name: &str) -> Result<Arc<KnowledgeBase>, ApiError> {
        let dir: PathBuf = kb_path(name, self.cfg.kb_dir.as_deref())
            .map_err(|e| ApiError::field("knowledge_base", e.to_string()))?;
        let slot = {
            let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match open.get(name) {
                Some(slot) => slot.clone(),
                None => {
                    // Only names that exist get a slot, so clients cannot grow the table.
                    if !dir.is_dir() {
                        return Err(ApiError::NotFound(format!(
                            "knowledge base `{name}` does not exist (create it with `ferrotune rag ingest --kb {name} ...`)"
                        )));
                    }
                    open.entry(name.to_string()).or_default().clone()
                }
            }
        };
        let kb = slot
            .kb
            .get_or_try_init(|| async {
                let kb = tokio::task::spawn_blocking(move || KnowledgeBase::open(&dir))
                    .await
                    .map_err(|e| internal(format!("opening knowledge base `{name}`: {e}")))?
                    .map_err(|e| internal(format!("knowledge base `{name}`: {e}")))?;
                Ok::<_, ApiError>(Arc::new(kb))
            })
            .await?
            .clone();
        let changed = kb.changed_on_disk().map_err(|e| internal(format!("knowledge base `{name}`: {e}")))?;
        if changed && !slot.reloading.swap(true, Ordering::SeqCst) {
            let _turn = ReloadTurn(slot.clone());
            let k = kb.clone();
            tokio::task::spawn_blocking(move || k.reload())
                .await
                .map_err(|e| internal(format!("reloading knowledge base `{name}`: {e}")))?
                .map_err(|e| internal(format!("knowledge base `{name}`: {e}")))?;
            self.reloads.fetch_add(1, Ordering::SeqCst);
        }
        Ok(kb)
    }

    /// Retrieve for the last user message and put the chunks into the conversation; `screen`:
    /// the injection classifier and the `retrieved_injection` mode, when that guard is on.
    pub async fn ground(
        self: &Arc<Self>,
        name: String,
        msgs: &mut Vec<Message>,
        tok: &Tokenizer,
        screen: Option<(&InjectionDetector, GuardMode)>,
    ) -> Result<Grounded, ApiError> {
        let question =
            msgs.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default();
        if question.trim().is_empty() {
            return Err(ApiError::field(
                "messages",
                "grounding needs a user message to search the knowledge base with",
            ));
        }
        let kb = self.get(&name).await?;
        let (k, mode) = (self.cfg.k, self.mode());
        let t0 = Instant::now();
        let hits = tokio::task::spawn_blocking(move || kb.query(&question, k, mode))
            .await
            .map_err(|e| internal(format!("retrieval task: {e}")))?
            .map_err(|e| internal(format!("retrieval in `{name}`: {e}")))?;
        let retrieval_secs = t0.elapsed().as_secs_f64();
        let picked = within_budget(hits, tok, self.cfg.context_tokens, screen);
        let chosen: Vec<Hit> = picked.kept.iter().map(|(h, _)| h.clone()).collect();
        let source = |index: Option<usize>, h: &Hit| Source {
            index,
            doc_id: h.doc_id.clone(),
            start_char: h.start_char,
            end_char: h.end_char,
            score: h.score,
            flagged: None,
            dropped: None,
            reason: None,
        };
        let mut sources: Vec<Source> = picked
            .kept
            .iter()
            .enumerate()
            .map(|(i, (h, flagged))| Source { flagged: flagged.then_some(true), ..source(Some(i + 1), h) })
            .collect();
        sources.extend(picked.dropped.iter().map(|h| Source {
            dropped: Some(true),
            reason: Some("prompt_injection".into()),
            ..source(None, h)
        }));
        let used = chosen.iter().map(|h| h.doc_id.clone()).collect();
        let block = prompt_block(&chosen);
        match msgs.first_mut() {
            Some(m) if m.role == "system" => m.content = format!("{}\n\n{block}", m.content),
            _ => msgs.insert(0, Message::new("system", block)),
        }
        Ok(Grounded { knowledge_base: name, sources, used, retrieval_secs, guards: picked.guards })
    }
}

/// What goes into the prompt: the hits kept (with whether the guard flagged them), those the
/// guard dropped, and its actions.
#[derive(Default)]
struct Picked {
    kept: Vec<(Hit, bool)>,
    dropped: Vec<Hit>,
    guards: Vec<GuardAction>,
}

/// The best hits (in rank order) whose text fits `budget` model tokens together, each scored by
/// the injection guard once (only those that fit: the rest never reach the prompt); a dropped
/// chunk takes no room, so the next one may fit in its place.
fn within_budget(
    hits: Vec<Hit>,
    tok: &Tokenizer,
    budget: usize,
    screen: Option<(&InjectionDetector, GuardMode)>,
) -> Picked {
    let mut used = 0;
    let mut out = Picked::default();
    for h in hits {
        let n = tok.encode(&h.text, false).map(|ids| ids.len()).unwrap_or(usize::MAX / 4);
        if used + n > budget {
            continue;
        }
        let verdict = screen.map(|(d, mode)| (d.check(&h.text), mode)).filter(|(v, _)| v.flagged);
        if let Some((v, mode)) = verdict {
            out.guards.push(GuardAction {
                guard: GuardKind::RetrievedInjection,
                action: mode,
                detail: format!("{}: {}", h.doc_id, v.detail()),
            });
            if mode == GuardMode::Block {
                out.dropped.push(h);
                continue;
            }
            used += n;
            out.kept.push((h, true));
            continue;
        }
        used += n;
        out.kept.push((h, false));
    }
    out
}

/// Rank order 1..n laid out as 1, 3, 5, …, 4, 2 (best at both ends).
fn edges_first(n: usize) -> Vec<usize> {
    let mut front: Vec<usize> = (0..n).step_by(2).collect();
    let back: Vec<usize> = (1..n).step_by(2).rev().collect();
    front.extend(back);
    front
}

fn prompt_block(chosen: &[Hit]) -> String {
    let mut s = String::from(
        "Answer the user's question using only the sources below. Cite the sources you use as [n]. \
         If the sources do not contain the answer, say that you do not know.\n",
    );
    for i in edges_first(chosen.len()) {
        let h = &chosen[i];
        s.push_str(&format!("\n[{}] ({})\n{}\n", i + 1, h.doc_id, h.text.trim()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_relevant_chunks_sit_at_both_ends() {
        assert_eq!(edges_first(5), vec![0, 2, 4, 3, 1]);
        assert_eq!(edges_first(4), vec![0, 2, 3, 1]);
        assert_eq!(edges_first(1), vec![0]);
        assert!(edges_first(0).is_empty());
    }
}
