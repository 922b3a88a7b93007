//! The server's side of the audit log (`ferrotune_govern::audit`, `[audit]` in serve.toml): what
//! is recorded ([`events`]) and the appender that writes it off the request path.
//!
//! Handlers never touch the log's files: [`Audit::record`] puts an event on an unbounded channel
//! (no await, no lock but the channel's) and one background thread drains whatever is queued and
//! appends it as one batch (`AuditLog::append`: one file lock and one fsync per batch) at most
//! every [`BATCH_INTERVAL`], or at once when [`BATCH_MAX`] are waiting. A failed append is logged,
//! counted (`ferrotune:audit_errors_total`) and retried with the next round's events — nothing is
//! dropped; the backlog is reported loudly when it passes [`BACKLOG_WARN`]. At graceful shutdown
//! [`Audit::close`] appends everything still queued and `serve.stop`, then signs a checkpoint.

pub mod events;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferrotune_govern::audit::{AuditLog, Event};

use crate::metrics::Metrics;

/// Longest an event waits in the queue before its batch is appended (when the log keeps up).
pub const BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// A batch is appended at once when this many events wait.
pub const BATCH_MAX: usize = 1000;
/// Events waiting (queued or failed to append) past which every further million is an error in
/// the log: the disk is failing or too slow for this load.
pub const BACKLOG_WARN: usize = 1_000_000;
/// Longest pause between retries of a failing append.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Attempts at shutdown before what is left is reported as not written.
const CLOSE_ATTEMPTS: u32 = 3;

/// What inference entries carry of prompts and answers (`log_prompts`, `[audit] prompt_text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Sizes only (`log_prompts` off).
    Nothing,
    /// `prompt_sha256` / `completion_sha256`.
    Hashes,
    /// The hashes and `prompt` / `completion` text.
    Text,
}

impl Content {
    pub fn of(log_prompts: bool, prompt_text: bool) -> Self {
        match (log_prompts, prompt_text) {
            (false, _) => Self::Nothing,
            (true, false) => Self::Hashes,
            (true, true) => Self::Text,
        }
    }
}

enum Msg {
    Event(Box<Event>),
    /// Append everything queued before it and then `stop`, sign a checkpoint, answer, end.
    Close(Box<Event>, tokio::sync::oneshot::Sender<()>),
}

/// A handle on the appender (cheap to clone); [`Audit::off`] records nothing.
#[derive(Clone, Default)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("on", &self.is_on()).field("content", &self.content()).finish()
    }
}

struct Inner {
    tx: Sender<Msg>,
    /// Events sent and not yet appended.
    backlog: Arc<AtomicUsize>,
    content: Content,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Audit {
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Start the appender thread on an opened log.
    pub fn start(log: AuditLog, content: Content, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let b = backlog.clone();
        let thread = std::thread::Builder::new().name("audit-appender".into()).spawn(move || {
            Appender { log, rx, backlog: b, metrics, pending: Vec::new(), failures: 0 }.run()
        })?;
        Ok(Self { inner: Some(Arc::new(Inner { tx, backlog, content, thread: Mutex::new(Some(thread)) })) })
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    pub fn content(&self) -> Content {
        self.inner.as_ref().map_or(Content::Nothing, |i| i.content)
    }

    /// Queue an event (never blocks). After [`Audit::close`] the event cannot be written: that
    /// is logged as an error naming it.
    pub fn record(&self, event: Event) {
        let Some(inner) = &self.inner else { return };
        let n = inner.backlog.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(BACKLOG_WARN) {
            tracing::error!(
                waiting = n,
                "the audit log is not keeping up: {n} events wait to be appended (see the errors above)"
            );
        }
        if let Err(mpsc::SendError(Msg::Event(e) | Msg::Close(e, _))) =
            inner.tx.send(Msg::Event(Box::new(event)))
        {
            inner.backlog.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(action = %e.action, actor = %e.actor, subject = %e.subject, "the audit log is closed: this event was not recorded");
        }
    }

    /// Graceful shutdown: append everything queued and `stop`, sign a checkpoint, and wait for
    /// the appender thread to end. A second call does nothing.
    pub async fn close(&self, stop: Event) {
        let Some(inner) = &self.inner else { return };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        inner.backlog.fetch_add(1, Ordering::Relaxed);
        if inner.tx.send(Msg::Close(Box::new(stop), done_tx)).is_err() {
            return;
        }
        // The thread answers once the batch is durable and the checkpoint signed.
        let _ = done_rx.await;
        let thread = inner.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

struct Appender {
    log: AuditLog,
    rx: Receiver<Msg>,
    backlog: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    /// Received, not yet appended (kept across failed appends).
    pending: Vec<Event>,
    failures: u32,
}

impl Appender {
    fn run(mut self) {
        let mut closing = None;
        loop {
            // Block for the first event unless some wait already (a failed append's).
            if self.pending.is_empty() {
                match self.rx.recv() {
                    Ok(m) => self.take(m, &mut closing),
                    // Every handle dropped without `close`: write what is left and end.
                    Err(_) => return self.finish(None),
                }
            }
            // Then gather for one interval (longer after failures), or until the batch is full.
            let round = if self.failures == 0 {
                BATCH_INTERVAL
            } else {
                (BATCH_INTERVAL * 2u32.pow(self.failures.min(7))).min(RETRY_MAX)
            };
            let until = Instant::now() + round;
            while closing.is_none() && self.pending.len() < BATCH_MAX {
                match self.rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(m) => self.take(m, &mut closing),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return self.finish(None),
                }
            }
            if let Some(c) = closing.take() {
                return self.finish(Some(c));
            }
            self.append();
        }
    }

    fn take(&mut self, m: Msg, closing: &mut Option<(Event, tokio::sync::oneshot::Sender<()>)>) {
        match m {
            Msg::Event(e) => self.pending.push(*e),
            Msg::Close(stop, done) => *closing = Some((*stop, done)),
        }
    }

    /// One append of everything pending. A panic in the log's code counts as a failure (the
    /// appender, and the events, survive it).
    fn append(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.log.append(&self.pending))).unwrap_or_else(|p| {
            Err(ferrotune_govern::GovernError::Refused(format!("the audit log panicked: {}", panic_text(&p))))
        });
        match result {
            Ok(appended) => {
                let mut by_action: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
                for e in &self.pending {
                    *by_action.entry(e.action.as_str()).or_default() += 1;
                }
                for (action, n) in by_action {
                    self.metrics
                        .audit_events
                        .get_or_create(&crate::metrics::ActionLabels { action: action.into() })
                        .inc_by(n);
                }
                if self.failures > 0 {
                    tracing::info!(events = self.pending.len(), "the audit log is written again");
                }
                tracing::debug!(events = self.pending.len(), size = appended.size, checkpoint = ?appended.checkpoint, "audit batch appended");
                self.backlog.fetch_sub(self.pending.len(), Ordering::Relaxed);
                self.pending.clear();
                self.failures = 0;
                true
            }
            Err(e) => {
                self.failures += 1;
                self.metrics.audit_errors.inc();
                tracing::error!(events = self.pending.len(), attempt = self.failures, dir = %self.log.dir().display(), "appending to the audit log failed: {e}; retrying");
                false
            }
        }
    }

    /// Shutdown: whatever else is queued, then `stop` last; a checkpoint over all of it.
    fn finish(mut self, closing: Option<(Event, tokio::sync::oneshot::Sender<()>)>) {
        while let Ok(m) = self.rx.try_recv() {
            match m {
                Msg::Event(e) => self.pending.push(*e),
                Msg::Close(e, _) => self.pending.push(*e),
            }
        }
        let (stop, done) = closing.map_or((None, None), |(s, d)| (Some(s), Some(d)));
        self.pending.extend(stop);
        let mut written = self.append();
        for _ in 1..CLOSE_ATTEMPTS {
            if written {
                break;
            }
            std::thread::sleep(BATCH_INTERVAL * 4);
            written = self.append();
        }
        if written {
            match catch_unwind(AssertUnwindSafe(|| self.log.checkpoint())) {
                Ok(Ok((c, _))) => tracing::info!(size = c.size, "audit log checkpoint signed at shutdown"),
                Ok(Err(e)) => {
                    self.metrics.audit_errors.inc();
                    tracing::error!("signing the audit log's checkpoint at shutdown failed: {e}");
                }
                Err(p) => {
                    self.metrics.audit_errors.inc();
                    tracing::error!(
                        "signing the audit log's checkpoint at shutdown panicked: {}",
                        panic_text(&p)
                    );
                }
            }
        } else {
            tracing::error!(events = self.pending.len(), dir = %self.log.dir().display(), "shutting down with audit events that could not be written");
        }
        if let Some(d) = done {
            let _ = d.send(());
        }
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
