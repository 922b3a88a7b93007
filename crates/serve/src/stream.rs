//! `stream: true`: the choices' event channels merged into one server-sent-event stream of
//! OpenAI chunks (`chat.completion.chunk` or `text_completion`), ending with `data: [DONE]`.
//! The stream owns the receivers, so a client that goes away drops them and the engine cancels
//! those sequences at its next step. At the request's deadline (`limits.request_timeout_s`) the
//! stream sends an error event and `[DONE]`, and drops the receivers the same way.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::{EngineHandle, Event};
use crate::error::ApiError;
use crate::generation::{Tracker, token_text};
use crate::record::RequestRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    Chat,
    Completion,
}

pub struct StreamSpec {
    pub kind: ChunkKind,
    pub id: String,
    pub created: u64,
    pub model: String,
    /// Choices per prompt (usage counts each prompt once).
    pub n: usize,
    /// Report logprobs (chat: bool; completions: legacy format).
    pub logprobs: bool,
    pub include_usage: bool,
    /// Completions with `echo`: the prompt text per prompt, sent as each choice's first chunk.
    pub echo: Option<Vec<String>>,
    /// Grounded chat: `knowledge_base` and `sources`, put on each choice's opening chunk.
    pub grounding: Option<(String, Value)>,
}

struct Ctx {
    spec: StreamSpec,
    merged: SelectAll<BoxStream<'static, (usize, Event)>>,
    trackers: Vec<Tracker>,
    engine: EngineHandle,
    record: Arc<RequestRecord>,
    pending: VecDeque<SseEvent>,
    text_offset: Vec<usize>,
    prompt_tokens: usize,
    completion_tokens: usize,
    finished: bool,
}

pub fn sse_response(
    spec: StreamSpec,
    rxs: Vec<UnboundedReceiver<Event>>,
    trackers: Vec<Tracker>,
    engine: EngineHandle,
    record: Arc<RequestRecord>,
) -> Response {
    let n_choices = rxs.len();
    let merged = stream::select_all(rxs.into_iter().enumerate().map(|(i, rx)| {
        stream::unfold(rx, move |mut rx| async move { rx.recv().await.map(|ev| ((i, ev), rx)) }).boxed()
    }));
    let mut ctx = Ctx {
        merged,
        trackers,
        engine,
        record,
        pending: VecDeque::new(),
        text_offset: vec![0; n_choices],
        prompt_tokens: 0,
        completion_tokens: 0,
        finished: false,
        spec,
    };
    for i in 0..n_choices {
        ctx.opening(i);
    }
    let events = stream::unfold(ctx, |mut ctx| async move {
        loop {
            if let Some(ev) = ctx.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), ctx));
            }
            if ctx.finished {
                return None;
            }
            let deadline = ctx.record.deadline;
            match tokio::time::timeout_at(deadline.into(), ctx.merged.next()).await {
                Ok(Some((i, ev))) => ctx.on_event(i, ev),
                Ok(None) => ctx.closing(),
                Err(_) => ctx.timed_out(),
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

impl Ctx {
    fn push(&mut self, v: Value) {
        self.pending.push_back(SseEvent::default().data(v.to_string()));
    }

    fn chunk(&self, choices: Value) -> Value {
        let object = match self.spec.kind {
            ChunkKind::Chat => "chat.completion.chunk",
            ChunkKind::Completion => "text_completion",
        };
        json!({"id": self.spec.id, "object": object, "created": self.spec.created, "model": self.spec.model, "choices": choices})
    }

    /// Chat: the assistant role first; completions with echo: the prompt.
    fn opening(&mut self, i: usize) {
        match self.spec.kind {
            ChunkKind::Chat => {
                let c = json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
                let mut v = self.chunk(c);
                if let Some((kb, sources)) = &self.spec.grounding {
                    v["knowledge_base"] = kb.clone().into();
                    v["sources"] = sources.clone();
                }
                self.push(v);
            }
            ChunkKind::Completion => {
                let Some(text) = self.spec.echo.as_ref().map(|p| p[i / self.spec.n].clone()) else { return };
                self.text_offset[i] = text.chars().count();
                let v = self.chunk(json!([{"index": i, "text": text, "logprobs": null, "finish_reason": null}]));
                self.push(v);
            }
        }
    }

    fn on_event(&mut self, i: usize, ev: Event) {
        if let Some(t) = self.trackers.get_mut(i) {
            t.observe(&ev);
        }
        match ev {
            Event::Started { .. } | Event::PromptLogprobs(_) => {}
            Event::Token { id, text, logprob } => {
                let lp = match (self.spec.logprobs, logprob) {
                    (true, Some(lp)) => Some(lp),
                    _ => None,
                };
                self.record.push_answer(i, &text);
                if text.is_empty() && lp.is_none() {
                    return;
                }
                let tok = &self.engine.info().tokenizer;
                let v = match self.spec.kind {
                    ChunkKind::Chat => {
                        let logprobs = lp.map(|lp| json!({"content": [crate::routes::chat::chat_logprob(tok, &lp)]}));
                        self.chunk(json!([{"index": i, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null}]))
                    }
                    ChunkKind::Completion => {
                        let logprobs = lp.map(|lp| {
                            let s = token_text(tok, id);
                            let offset = self.text_offset[i];
                            self.text_offset[i] += s.chars().count();
                            crate::routes::completions::legacy_logprobs(tok, &[(s, Some(lp))], offset)
                        });
                        self.chunk(json!([{"index": i, "text": text, "logprobs": logprobs, "finish_reason": null}]))
                    }
                };
                self.push(v);
            }
            Event::Done { finish, prompt_tokens, completion_tokens } => {
                if i.is_multiple_of(self.spec.n) {
                    self.prompt_tokens += prompt_tokens;
                    self.record.add_tokens(prompt_tokens, 0);
                }
                self.completion_tokens += completion_tokens;
                self.record.add_tokens(0, completion_tokens);
                self.record.set_choice(i, finish.as_str(), None);
                let c = match self.spec.kind {
                    ChunkKind::Chat => json!([{"index": i, "delta": {}, "logprobs": null, "finish_reason": finish.as_str()}]),
                    ChunkKind::Completion => json!([{"index": i, "text": "", "logprobs": null, "finish_reason": finish.as_str()}]),
                };
                let v = self.chunk(c);
                self.push(v);
            }
            Event::Error(_) => {
                // Already logged by the tracker; the client gets the generic error.
                self.push(ApiError::Internal.body());
            }
        }
    }

    fn timed_out(&mut self) {
        tracing::warn!(request_id = %self.record.id, "request_timeout_s reached: ending the stream");
        // Dropping the receivers cancels the sequences at the engine's next step.
        self.merged = SelectAll::new();
        let secs = (self.record.deadline - self.record.started()).as_secs_f64();
        self.push(ApiError::Timeout((secs * 1000.0).round() / 1000.0).body());
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
    }

    fn closing(&mut self) {
        if self.spec.include_usage {
            let usage = json!({
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            });
            let mut v = self.chunk(json!([]));
            v["usage"] = usage;
            self.push(v);
        }
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
    }
}
