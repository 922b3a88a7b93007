//! `stream: true`: the choices' event channels merged into one server-sent-event stream of
//! OpenAI chunks (`chat.completion.chunk` or `text_completion`), ending with `data: [DONE]`.
//! The stream owns the receivers, so a client that goes away drops them and the engine cancels
//! those sequences at its next step. At the request's deadline (`limits.request_timeout_s`) the
//! stream sends an error event and `[DONE]`, and drops the receivers the same way.
//!
//! Output guards ([`crate::guards`]): with one on, each choice's text goes through its own
//! `OutputGuard`, and only what it releases is sent (it holds back the few bytes a match could
//! still span, and flushes them at the end). When a `block` guard fires, that choice's receiver
//! is dropped (the engine cancels the sequence) and the choice ends with `finish_reason:
//! "content_filter"`; the others go on. What the guards did comes in one chunk with `choices: []`
//! and a `guards` list, after the last choice and before the usage chunk — only when a guard
//! acted. With the output guards off there is no filter and the token path is as before.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferrotune_guard::output::OutputGuard;
use futures_util::stream::{self, AbortHandle, BoxStream, SelectAll, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::{EngineHandle, Event};
use crate::error::ApiError;
use crate::generation::{CONTENT_FILTER, Tracker, token_text};
use crate::guards::{Acted, RequestGuards};
use crate::record::RequestRecord;
use crate::response::{
    ChatChunkChoice, ChatCompletionChunk, ChatLogprobs, CompletionChunk, CompletionChunkChoice, Delta,
    LegacyLogprobs, Object, Source, Usage,
};

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
    pub grounding: Option<(String, Vec<Source>)>,
    /// The request's guards: their output filters run on each choice's text, and what they did
    /// is sent before the usage chunk.
    pub guards: RequestGuards,
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
    /// Per choice: its output filter (`None` when no output guard is on), the handle that drops
    /// its receiver, its prompt tokens and the tokens it generated (for a choice a guard ends,
    /// which gets no `Done`), and whether it has ended.
    filters: Vec<Option<OutputGuard>>,
    aborts: Vec<AbortHandle>,
    choice_prompt: Vec<usize>,
    choice_tokens: Vec<usize>,
    ended: Vec<bool>,
}

pub fn sse_response(
    spec: StreamSpec,
    rxs: Vec<UnboundedReceiver<Event>>,
    trackers: Vec<Tracker>,
    engine: EngineHandle,
    record: Arc<RequestRecord>,
) -> Response {
    let n_choices = rxs.len();
    let mut aborts = Vec::with_capacity(n_choices);
    let merged = stream::select_all(rxs.into_iter().enumerate().map(|(i, rx)| {
        let (events, abort) = stream::abortable(stream::unfold(rx, move |mut rx| async move {
            rx.recv().await.map(|ev| ((i, ev), rx))
        }));
        aborts.push(abort);
        events.boxed()
    }));
    let filters = (0..n_choices).map(|_| spec.guards.output_guard()).collect();
    let mut ctx = Ctx {
        filters,
        aborts,
        choice_prompt: vec![0; n_choices],
        choice_tokens: vec![0; n_choices],
        ended: vec![false; n_choices],
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
    fn push(&mut self, v: &impl Serialize) {
        match serde_json::to_string(v) {
            Ok(data) => self.pending.push_back(SseEvent::default().data(data)),
            Err(e) => tracing::error!("could not serialize a stream chunk: {e}"),
        }
    }

    fn chat_chunk(&self, choices: Vec<ChatChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.spec.id.clone(),
            object: Object::ChatCompletionChunk,
            created: self.spec.created,
            model: self.spec.model.clone(),
            choices,
            knowledge_base: None,
            sources: None,
            guards: None,
            usage: None,
        }
    }

    fn text_chunk(&self, choices: Vec<CompletionChunkChoice>) -> CompletionChunk {
        CompletionChunk {
            id: self.spec.id.clone(),
            object: Object::TextCompletion,
            created: self.spec.created,
            model: self.spec.model.clone(),
            choices,
            guards: None,
            usage: None,
        }
    }

    /// A chunk of choice `i` alone: chat's `delta` or completions' `text`.
    fn send_chat(&mut self, i: usize, delta: Delta, logprobs: Option<ChatLogprobs>, finish: Option<&str>) {
        let finish_reason = finish.map(str::to_string);
        let v = self.chat_chunk(vec![ChatChunkChoice { index: i, delta, logprobs, finish_reason }]);
        self.push(&v);
    }

    fn send_text(&mut self, i: usize, text: String, logprobs: Option<LegacyLogprobs>, finish: Option<&str>) {
        let finish_reason = finish.map(str::to_string);
        let v = self.text_chunk(vec![CompletionChunkChoice { index: i, text, logprobs, finish_reason }]);
        self.push(&v);
    }

    /// A chunk without choices, carrying the guards' list or the usage.
    fn send_tail(&mut self, guards: Option<Vec<Acted>>, usage: Option<Usage>) {
        match self.spec.kind {
            ChunkKind::Chat => {
                let v = ChatCompletionChunk { guards, usage, ..self.chat_chunk(vec![]) };
                self.push(&v);
            }
            ChunkKind::Completion => {
                let v = CompletionChunk { guards, usage, ..self.text_chunk(vec![]) };
                self.push(&v);
            }
        }
    }

    /// Chat: the assistant role first; completions with echo: the prompt.
    fn opening(&mut self, i: usize) {
        match self.spec.kind {
            ChunkKind::Chat => {
                let choice = ChatChunkChoice {
                    index: i,
                    delta: Delta::opening(),
                    logprobs: None,
                    finish_reason: None,
                };
                let mut v = self.chat_chunk(vec![choice]);
                if let Some((kb, sources)) = &self.spec.grounding {
                    v.knowledge_base = Some(kb.clone());
                    v.sources = Some(sources.clone());
                }
                self.push(&v);
            }
            ChunkKind::Completion => {
                let Some(text) = self.spec.echo.as_ref().map(|p| p[i / self.spec.n].clone()) else { return };
                self.text_offset[i] = text.chars().count();
                self.send_text(i, text, None, None);
            }
        }
    }

    fn on_event(&mut self, i: usize, ev: Event) {
        if self.ended.get(i).copied().unwrap_or(true) {
            return;
        }
        if let Some(t) = self.trackers.get_mut(i) {
            t.observe(&ev);
        }
        match ev {
            Event::Started { prompt_tokens, .. } => self.choice_prompt[i] = prompt_tokens,
            Event::PromptLogprobs(_) => {}
            Event::Token { id, text, logprob } => {
                let text = match self.filters[i].as_mut() {
                    None => text,
                    Some(g) => {
                        self.choice_tokens[i] += 1;
                        let r = g.push(&text);
                        let actions = g.take_actions();
                        self.spec.guards.note_output(i, actions);
                        if r.blocked {
                            self.block(i, &r.text, None);
                            return;
                        }
                        r.text
                    }
                };
                let lp = match (self.spec.logprobs, logprob) {
                    (true, Some(lp)) => Some(lp),
                    _ => None,
                };
                self.record.push_answer(i, &text);
                if text.is_empty() && lp.is_none() {
                    return;
                }
                match self.spec.kind {
                    ChunkKind::Chat => {
                        let tok = &self.engine.info().tokenizer;
                        let logprobs = lp.map(|lp| ChatLogprobs {
                            content: vec![crate::routes::chat::chat_logprob(tok, &lp)],
                        });
                        self.send_chat(i, Delta::text(text), logprobs, None);
                    }
                    ChunkKind::Completion => {
                        let tok = &self.engine.info().tokenizer;
                        let logprobs = lp.map(|lp| {
                            let s = token_text(tok, id);
                            let offset = self.text_offset[i];
                            self.text_offset[i] += s.chars().count();
                            crate::routes::completions::legacy_logprobs(tok, &[(s, Some(lp))], offset)
                        });
                        self.send_text(i, text, logprobs, None);
                    }
                }
            }
            Event::Done { finish, prompt_tokens, completion_tokens } => {
                // What the filter held back goes out now, filtered.
                if let Some(g) = self.filters[i].as_mut() {
                    let rest = g.finish();
                    let actions = g.take_actions();
                    self.spec.guards.note_output(i, actions);
                    if rest.blocked {
                        self.block(i, &rest.text, Some((prompt_tokens, completion_tokens)));
                        return;
                    }
                    self.record.push_answer(i, &rest.text);
                    self.content(i, &rest.text);
                }
                self.end_choice(i, finish.as_str(), prompt_tokens, completion_tokens);
            }
            Event::Error(_) => {
                // Already logged by the tracker; the client gets the generic error.
                self.push(&ApiError::Internal.body());
            }
        }
    }

    /// A piece of choice `i`'s text, without logprobs (text an output filter released late).
    fn content(&mut self, i: usize, text: &str) {
        if text.is_empty() {
            return;
        }
        match self.spec.kind {
            ChunkKind::Chat => self.send_chat(i, Delta::text(text.to_string()), None, None),
            ChunkKind::Completion => self.send_text(i, text.to_string(), None, None),
        }
    }

    /// Choice `i` is over: usage, the record, and its last chunk.
    fn end_choice(&mut self, i: usize, finish: &str, prompt_tokens: usize, completion_tokens: usize) {
        self.ended[i] = true;
        if i.is_multiple_of(self.spec.n) {
            self.prompt_tokens += prompt_tokens;
            self.record.add_tokens(prompt_tokens, 0);
        }
        self.completion_tokens += completion_tokens;
        self.record.add_tokens(0, completion_tokens);
        self.record.set_choice(i, finish, None);
        match self.spec.kind {
            ChunkKind::Chat => self.send_chat(i, Delta::default(), None, Some(finish)),
            ChunkKind::Completion => self.send_text(i, String::new(), None, Some(finish)),
        }
    }

    /// A `block` guard ended choice `i`: send what was released before the finding, drop the
    /// receiver (the engine cancels the sequence at its next step) and finish with
    /// `content_filter`. `done`: the engine's token counts, when it had already finished.
    fn block(&mut self, i: usize, released: &str, done: Option<(usize, usize)>) {
        self.aborts[i].abort();
        self.record.push_answer(i, released);
        self.content(i, released);
        if done.is_none()
            && let Some(t) = self.trackers.get_mut(i)
        {
            t.filtered();
        }
        let (prompt_tokens, completion_tokens) =
            done.unwrap_or((self.choice_prompt[i], self.choice_tokens[i]));
        self.end_choice(i, CONTENT_FILTER, prompt_tokens, completion_tokens);
    }

    fn timed_out(&mut self) {
        tracing::warn!(request_id = %self.record.id, "request_timeout_s reached: ending the stream");
        // Dropping the receivers cancels the sequences at the engine's next step.
        self.merged = SelectAll::new();
        let secs = (self.record.deadline - self.record.started()).as_secs_f64();
        self.push(&ApiError::Timeout((secs * 1000.0).round() / 1000.0).body());
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
    }

    fn closing(&mut self) {
        if let Some(list) = self.spec.guards.all() {
            self.send_tail(Some(list), None);
        }
        if self.spec.include_usage {
            self.send_tail(None, Some(Usage::new(self.prompt_tokens, self.completion_tokens)));
        }
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
    }
}

/// The stream's guard plumbing over hand-made event channels (no engine sequence): what is sent,
/// that a blocked choice's receiver is dropped (the engine's cancel signal), and that every
/// stream stays well-formed.
#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use candle_core::Device;
    use ferrotune_guard::{GuardKind, GuardMode};
    use ferrotune_model::Message;
    use serde_json::{Value, json};
    use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

    use super::*;
    use crate::app::AppState;
    use crate::auth::Caller;
    use crate::config::ServeConfig;
    use crate::engine::FinishReason;
    use crate::generation::Target;

    const SYSTEM: &str =
        "You are the support assistant of Acme Corp and never offer refunds above fifty euros.";

    fn state(configure: impl FnOnce(&mut ServeConfig)) -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().expect("tmp");
        ferrotune_model::testing::write_tiny_model(dir.path()).expect("tiny model");
        let m = ferrotune_model::load_path(dir.path(), ferrotune_model::WeightMode::F32, &Device::Cpu)
            .expect("load");
        let engine = crate::engine::start(m, "tiny".into(), Default::default());
        let mut cfg = ServeConfig { auth: false, ..Default::default() };
        cfg.embeddings.model = String::new();
        configure(&mut cfg);
        cfg.validate().expect("valid config");
        (dir, AppState::new(engine, cfg, None, None))
    }

    struct Streamed {
        /// Every `data:` payload but `[DONE]`, parsed.
        chunks: Vec<Value>,
        done_last: bool,
        /// The event sender, when the test kept it open (no `Done` sent).
        tx: Option<UnboundedSender<Event>>,
        record: Arc<RequestRecord>,
    }

    impl Streamed {
        fn content(&self) -> String {
            self.chunks
                .iter()
                .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str()))
                .collect()
        }

        fn finish(&self) -> Vec<String> {
            self.chunks
                .iter()
                .filter_map(|c| {
                    c["choices"].get(0).and_then(|ch| ch["finish_reason"].as_str()).map(str::to_string)
                })
                .collect()
        }

        fn guards(&self) -> Option<&Value> {
            self.chunks.iter().find_map(|c| c.get("guards"))
        }
    }

    /// One chat choice whose tokens are `pieces`; `end`: the engine sends `Done` (and drops its
    /// sender) after them, else the sender stays open as for a sequence still running.
    async fn run(state: &AppState, system: Option<&str>, pieces: &[&str], end: bool) -> Streamed {
        let target = Target { name: "tiny".into(), adapter: None, version: None };
        let record = RequestRecord::for_tests(state);
        let mut guards = RequestGuards::new(state, &target, &Caller(None), &record);
        if let Some(sp) = system {
            guards.protect_system(&mut [Message::new("system", sp)]);
        }
        let (tx, rx) = unbounded_channel();
        let _ = tx.send(Event::Started { queue_secs: 0.0, prompt_tokens: 5 });
        for (i, p) in pieces.iter().enumerate() {
            let _ = tx.send(Event::Token { id: i as u32, text: p.to_string(), logprob: None });
        }
        let tx = if end {
            let _ = tx.send(Event::Done {
                finish: FinishReason::Stop,
                prompt_tokens: 5,
                completion_tokens: pieces.len(),
            });
            drop(tx); // as the engine does after `Done`: the receiver then ends
            None
        } else {
            Some(tx)
        };
        let spec = StreamSpec {
            kind: ChunkKind::Chat,
            id: "chatcmpl-test".into(),
            created: 0,
            model: "tiny".into(),
            n: 1,
            logprobs: false,
            include_usage: true,
            echo: None,
            grounding: None,
            guards,
        };
        let trackers = vec![Tracker::new(state, &target, Instant::now(), &record)];
        let resp = sse_response(spec, vec![rx], trackers, state.engine.clone(), record.clone());
        let body =
            tokio::time::timeout(Duration::from_secs(20), axum::body::to_bytes(resp.into_body(), usize::MAX))
                .await
                .expect("the stream ends by itself")
                .expect("body");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
        let done_last = data.last() == Some(&"[DONE]");
        let chunks = data
            .iter()
            .filter(|d| **d != "[DONE]")
            .map(|d| serde_json::from_str::<Value>(d).unwrap_or_else(|e| panic!("not JSON ({e}): {d}")))
            .collect();
        Streamed { chunks, done_last, tx, record }
    }

    fn well_formed(s: &Streamed) {
        assert!(s.done_last, "ends with [DONE]: {:?}", s.chunks);
        for c in &s.chunks {
            assert_eq!(c["object"], "chat.completion.chunk", "{c}");
            assert!(c["choices"].is_array() && c.get("error").is_none(), "{c}");
        }
        assert_eq!(s.finish().len(), 1, "one finish per choice: {:?}", s.chunks);
        let last = s.chunks.last().expect("chunks");
        assert!(last["usage"]["completion_tokens"].is_u64(), "usage comes last: {last}");
    }

    /// An e-mail address split over tokens, and more than the filter's window after it (so a
    /// `block` fires while the sequence still runs).
    const PII: [&str; 8] = [
        "Sure, write",
        " to jane",
        ".doe@exa",
        "mple.com",
        " and we",
        " reply within a day,",
        " usually sooner, unless it is",
        " a public holiday in Bavaria.",
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocked_stream_ends_with_content_filter_and_drops_the_receiver() {
        let (_d, st) = state(|c| c.guards.output_pii = GuardMode::Block);
        let s = run(&st, None, &PII, false).await;
        well_formed(&s);
        assert_eq!(s.content(), "Sure, write to ");
        assert_eq!(s.finish(), ["content_filter"]);
        let tx = s.tx.as_ref().expect("kept open");
        assert!(tx.is_closed(), "the receiver is dropped, so the engine cancels the sequence");
        let g = s.guards().expect("guards chunk");
        assert_eq!(g[0]["guard"], "output_pii");
        assert_eq!(g[0]["action"], "block");
        assert_eq!(g[0]["detail"], "email");
        assert_eq!(g[0]["index"], 0);
        let guards_chunk = s.chunks.iter().find(|c| c.get("guards").is_some()).expect("guards chunk");
        assert_eq!(guards_chunk["choices"], json!([]), "a chunk of its own, valid for OpenAI clients");
        assert_eq!(s.record.guards().len(), 1);
        assert_eq!(
            s.chunks.last().expect("usage")["usage"]["completion_tokens"],
            PII.len(),
            "the tokens generated up to the block"
        );
        let m = st.metrics.render(&st.engine.stats());
        assert!(m.contains(r#"ferrotune:guard_actions_total{guard="output_pii",action="block"} 1"#), "{m}");
        assert!(m.contains(r#"finished_reason="content_filter"} 1"#), "{m}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redacted_stream_sends_placeholders_and_flushes_the_held_back_text_at_the_end() {
        let (_d, st) = state(|c| c.guards.output_pii = GuardMode::Redact);
        let s = run(&st, None, &PII, true).await;
        well_formed(&s);
        assert_eq!(
            s.content(),
            "Sure, write to [EMAIL] and we reply within a day, usually sooner, unless it is a public holiday in Bavaria."
        );
        assert_eq!(s.finish(), ["stop"]);
        assert_eq!(s.guards().expect("guards")[0]["action"], "redact");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_mode_sends_the_text_unchanged_and_still_reports() {
        let (_d, st) = state(|c| c.guards.output_pii = GuardMode::Log);
        let s = run(&st, None, &PII, true).await;
        well_formed(&s);
        assert_eq!(s.content(), PII.concat());
        assert_eq!(s.finish(), ["stop"]);
        assert_eq!(s.guards().expect("guards")[0]["action"], "log");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_the_output_guards_off_there_is_no_filter_and_no_guards_chunk() {
        let (_d, st) = state(|c| {
            c.guards.output_pii = GuardMode::Off;
            c.guards.system_prompt_leak = GuardMode::Off;
        });
        let s = run(&st, Some(SYSTEM), &PII, true).await;
        well_formed(&s);
        assert_eq!(s.content(), PII.concat());
        assert!(s.guards().is_none(), "nothing acted: no guards chunk");
        // Each token is its own chunk: nothing is held back.
        assert_eq!(
            s.chunks
                .iter()
                .filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()))
                .count(),
            PII.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_canary_split_over_tokens_is_redacted_and_blocked() {
        let (_d, st) = state(|c| c.guards.system_prompt_leak = GuardMode::Redact);
        let canary = st.guards.canary_for(SYSTEM);
        let (a, b) = canary.split_at(7);
        let pieces = ["My first line is [", a, b, "] and that is all."];
        let s = run(&st, Some(SYSTEM), &pieces, true).await;
        well_formed(&s);
        assert_eq!(s.content(), "My first line is [[REDACTED]] and that is all.");
        let g = s.guards().expect("guards");
        assert_eq!(
            (g[0]["guard"].as_str(), g[0]["detail"].as_str()),
            (Some(GuardKind::SystemPromptLeak.as_str()), Some("canary"))
        );

        let (_d, st) = state(|c| c.guards.system_prompt_leak = GuardMode::Block);
        let canary = st.guards.canary_for(SYSTEM);
        let (a, b) = canary.split_at(7);
        let pieces = ["My first line is [", a, b, "] and that is all."];
        let s = run(&st, Some(SYSTEM), &pieces, false).await;
        well_formed(&s);
        assert_eq!(s.content(), "My first line is [");
        assert_eq!(s.finish(), ["content_filter"]);
        assert!(s.tx.as_ref().is_some_and(UnboundedSender::is_closed));
    }

    /// A false positive (text that only looks like data) never breaks the stream's shape, in
    /// any mode.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_stay_well_formed_whatever_the_guards_do() {
        let pieces = [
            "Version 1.2",
            ".3.4 of the",
            " tool ships ",
            "on ",
            "Monday; call 555",
            "-0100 for ",
            "help",
            ".",
        ];
        for mode in [GuardMode::Log, GuardMode::Block, GuardMode::Redact] {
            let (_d, st) = state(|c| {
                c.guards.output_pii = mode;
                c.guards.system_prompt_leak = mode;
            });
            let s = run(&st, Some(SYSTEM), &pieces, true).await;
            well_formed(&s);
            let text = s.content();
            match mode {
                GuardMode::Log => assert_eq!(text, pieces.concat()),
                GuardMode::Block => assert!(pieces.concat().starts_with(&text), "{text}"),
                _ => assert!(!text.is_empty(), "{text}"),
            }
        }
    }
}
