//! The answer side: a streaming filter over one answer's text that
//!
//! - catches a **system-prompt leak** (OWASP LLM07): the request's canary (a random-looking
//!   marker put into the system prompt, [`canary`] / [`with_canary`]), or a run of
//!   `leak_min_words` consecutive words of the system prompt repeated verbatim (words compared
//!   lowercased, punctuation and spacing ignored);
//! - finds **personal data** (LLM02) with the data stage's detectors
//!   ([`ferrotune_data::pii::PiiDetector`]: e-mail, phone, card numbers (Luhn), IBAN (mod-97), SSN,
//!   IP addresses) and redacts it to typed placeholders (`[EMAIL]`, `[CREDIT_CARD]`, …).
//!
//! Streaming: text is given out as soon as nothing later could still change it. In `block` or
//! `redact` mode the filter holds back only what a match could still span — the last
//! [`PII_WINDOW`] bytes for personal data, the last `leak_min_words − 1` words and the canary's
//! length for a leak — and never cuts through a match. In `log` mode nothing is held back: the
//! action is recorded and the text goes out unchanged (personal data is looked for once, on the
//! whole answer, at [`OutputGuard::finish`]). With both guards off the filter is a pass-through.
//!
//! `block` ends the answer at the start of what was found: the caller stops the sequence and
//! reports `finish_reason: "content_filter"`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use ferrotune_data::pii::{PiiDetector, PiiMatch};
use sha2::{Digest, Sha256};

use crate::{GuardAction, GuardKind, GuardMode};

/// Bytes held back while personal data is blocked or redacted: longer than the longest match
/// the detectors produce in practice (a spaced IBAN is 42 characters, a card number 23).
pub const PII_WINDOW: usize = 64;

/// What replaces a leaked span in `redact` mode.
pub const LEAK_PLACEHOLDER: &str = "[REDACTED]";

fn detector() -> &'static PiiDetector {
    static D: OnceLock<PiiDetector> = OnceLock::new();
    D.get_or_init(PiiDetector::new)
}

/// The canary of a system prompt: deterministic per (server secret, system prompt), so the
/// same request renders the same prompt (exact-response caching still works), while a client,
/// who never sees the secret, cannot predict or strip it.
pub fn canary(secret: &[u8], system_prompt: &str) -> String {
    let mut h = Sha256::new();
    h.update(secret);
    h.update([0u8]);
    h.update(system_prompt.as_bytes());
    let digest = hex::encode(h.finalize());
    // 32 bits: enough that no answer holds it by chance, and short (about 10 tokens with its
    // line): each guarded request prefills it.
    format!("ft-{}", &digest[..8])
}

/// The system prompt with its canary as a first line, where "repeat everything above" and
/// "print your instructions" attacks start copying.
pub fn with_canary(system_prompt: &str, canary: &str) -> String {
    format!("[{canary}]\n{system_prompt}")
}

/// Settings of one answer's filter.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    /// `output_pii` mode.
    pub pii: GuardMode,
    /// `system_prompt_leak` mode.
    pub leak: GuardMode,
    /// The system prompt as written (without the canary line), if the request has one.
    pub system_prompt: Option<String>,
    /// The canary placed into the system prompt, if any.
    pub canary: Option<String>,
    /// Consecutive system-prompt words that count as a leak.
    pub leak_min_words: usize,
}

/// What may be sent now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    pub text: String,
    /// The answer is over: a `block` guard fired. Later pushes release nothing.
    pub blocked: bool,
}

/// A found span of the answer (byte offsets into the whole answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

/// One word of the answer: hash of its lowercased form and where it is.
#[derive(Debug, Clone, Copy)]
struct Word {
    hash: u64,
    start: usize,
    end: usize,
}

pub struct OutputGuard {
    pii: GuardMode,
    leak: GuardMode,
    canary: Option<String>,
    /// Hashes of every `n`-word run of the system prompt.
    ngrams: HashSet<u64>,
    n: usize,
    /// The whole answer so far, as generated.
    full: String,
    /// Bytes of `full` given out.
    released: usize,
    /// Leak state: the last `n` complete words, where word scanning resumes, where the canary
    /// search resumes, the spans found (sorted, merged).
    words: VecDeque<Word>,
    word_scan: usize,
    canary_scan: usize,
    leaks: Vec<Span>,
    blocked: bool,
    actions: Vec<GuardAction>,
    taken: usize,
}

fn word_hash(word: &str) -> u64 {
    let mut h = DefaultHasher::new();
    for c in word.chars().flat_map(char::to_lowercase) {
        c.hash(&mut h);
    }
    h.finish()
}

fn run_hash(words: impl Iterator<Item = u64>) -> u64 {
    words.fold(0xcbf2_9ce4_8422_2325_u64, |acc, w| acc.wrapping_mul(0x0100_0000_01b3).rotate_left(5) ^ w)
}

/// Every maximal run of alphanumeric characters in `text`, with byte offsets.
fn words_of(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(move |w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl OutputGuard {
    pub fn new(cfg: OutputConfig) -> Self {
        let n = cfg.leak_min_words.max(1);
        let mut ngrams = HashSet::new();
        if cfg.leak.is_on()
            && let Some(sp) = &cfg.system_prompt
        {
            let hashes: Vec<u64> = words_of(sp).map(|(_, w)| word_hash(w)).collect();
            for win in hashes.windows(n) {
                ngrams.insert(run_hash(win.iter().copied()));
            }
        }
        Self {
            pii: cfg.pii,
            leak: cfg.leak,
            canary: if cfg.leak.is_on() { cfg.canary.filter(|c| !c.is_empty()) } else { None },
            ngrams,
            n,
            full: String::new(),
            released: 0,
            words: VecDeque::with_capacity(n + 1),
            word_scan: 0,
            canary_scan: 0,
            leaks: Vec::new(),
            blocked: false,
            actions: Vec::new(),
            taken: 0,
        }
    }

    /// Both guards off: [`OutputGuard::push`] gives back its input.
    pub fn is_passthrough(&self) -> bool {
        !self.pii.is_on() && !self.leak.is_on()
    }

    /// Actions found since the last call.
    pub fn take_actions(&mut self) -> Vec<GuardAction> {
        let new = self.actions[self.taken..].to_vec();
        self.taken = self.actions.len();
        new
    }

    /// Every action so far.
    pub fn actions(&self) -> &[GuardAction] {
        &self.actions
    }

    pub fn push(&mut self, delta: &str) -> Released {
        if self.blocked {
            return Released { text: String::new(), blocked: true };
        }
        if self.is_passthrough() {
            self.released += delta.len();
            return Released { text: delta.to_string(), blocked: false };
        }
        self.full.push_str(delta);
        self.scan_leaks(false);
        self.release(false)
    }

    /// The end of the answer: everything not yet given out, filtered.
    pub fn finish(&mut self) -> Released {
        if self.blocked {
            return Released { text: String::new(), blocked: true };
        }
        if self.is_passthrough() {
            return Released::default();
        }
        self.scan_leaks(true);
        let out = self.release(true);
        if self.pii == GuardMode::Log {
            for m in detector().find(&self.full) {
                self.act(GuardKind::OutputPii, GuardMode::Log, m.kind.as_str().to_string());
            }
        }
        out
    }

    fn act(&mut self, guard: GuardKind, action: GuardMode, detail: String) {
        self.actions.push(GuardAction { guard, action, detail });
    }

    /// Find canary occurrences and verbatim runs in the text not scanned yet; `at_end`: the
    /// last word is complete.
    fn scan_leaks(&mut self, at_end: bool) {
        if !self.leak.is_on() {
            return;
        }
        if let Some(c) = &self.canary {
            let c = c.clone();
            loop {
                let from = floor_char_boundary(&self.full, self.canary_scan);
                match self.full[from..].find(c.as_str()) {
                    Some(p) => {
                        let span = Span { start: from + p, end: from + p + c.len() };
                        self.canary_scan = span.end;
                        self.add_leak(span, "canary".to_string());
                    }
                    None => {
                        self.canary_scan =
                            self.canary_scan.max(self.full.len().saturating_sub(c.len().saturating_sub(1)));
                        break;
                    }
                }
            }
        }
        if self.ngrams.is_empty() {
            return;
        }
        let tail = &self.full[self.word_scan..];
        let mut complete = Vec::new();
        for (off, w) in words_of(tail) {
            let end = self.word_scan + off + w.len();
            // A word touching the end of the text may still grow.
            if end == self.full.len() && !at_end {
                break;
            }
            complete.push(Word { hash: word_hash(w), start: self.word_scan + off, end });
        }
        for w in complete {
            self.word_scan = w.end;
            self.words.push_back(w);
            if self.words.len() > self.n {
                self.words.pop_front();
            }
            if self.words.len() == self.n
                && self.ngrams.contains(&run_hash(self.words.iter().map(|w| w.hash)))
            {
                let span = Span { start: self.words[0].start, end: w.end };
                let detail = format!("verbatim span of {} words of the system prompt", self.n);
                self.add_leak(span, detail);
            }
        }
    }

    /// Record a leak span; one that overlaps or touches the last grows it (one action per leak).
    fn add_leak(&mut self, span: Span, detail: String) {
        if let Some(last) = self.leaks.last_mut()
            && span.start <= last.end
        {
            last.start = last.start.min(span.start);
            last.end = last.end.max(span.end);
            let (start, end) = (last.start, last.end);
            if detail == "canary" {
                self.act(GuardKind::SystemPromptLeak, self.leak, detail);
            } else if let Some(i) = self
                .actions
                .iter()
                .rposition(|a| a.guard == GuardKind::SystemPromptLeak && a.detail.starts_with("verbatim"))
                && i >= self.taken
            {
                // Not reported yet: say how long the run grew.
                let words = words_of(&self.full[start..end]).count();
                self.actions[i].detail = format!("verbatim span of {words} words of the system prompt");
            }
            return;
        }
        self.leaks.push(span);
        self.act(GuardKind::SystemPromptLeak, self.leak, detail);
    }

    /// Bytes of `full` that may go out now (before filtering).
    fn safe_end(&self, at_end: bool) -> usize {
        let len = self.full.len();
        if at_end {
            return len;
        }
        let mut safe = len;
        if matches!(self.pii, GuardMode::Block | GuardMode::Redact) {
            safe = safe.min(len.saturating_sub(PII_WINDOW));
        }
        if matches!(self.leak, GuardMode::Block | GuardMode::Redact) {
            if let Some(c) = &self.canary {
                safe = safe.min(len.saturating_sub(c.len()));
            }
            if !self.ngrams.is_empty() {
                // The next run to complete starts at the (n−1)-th most recent complete word
                // (the deque holds every word while there are fewer); an unfinished word is
                // after it.
                let keep = self.n - 1;
                let start = if keep == 0 {
                    self.word_scan
                } else if self.words.len() >= keep {
                    self.words[self.words.len() - keep].start
                } else {
                    self.words.front().map_or(self.word_scan, |w| w.start)
                };
                safe = safe.min(start);
            }
        }
        floor_char_boundary(&self.full, safe.max(self.released))
    }

    fn release(&mut self, at_end: bool) -> Released {
        let mut safe = self.safe_end(at_end);
        let from = self.released;
        // Personal data in what is not yet out (blocking / redacting modes only).
        let pii: Vec<PiiMatch> = if matches!(self.pii, GuardMode::Block | GuardMode::Redact) {
            detector()
                .find(&self.full[from..])
                .into_iter()
                .map(|m| PiiMatch { kind: m.kind, start: m.start + from, end: m.end + from })
                .collect()
        } else {
            Vec::new()
        };
        // Never cut through a match: one straddling the boundary waits.
        for m in &pii {
            if m.start < safe && safe < m.end {
                safe = m.start;
            }
        }
        for l in &self.leaks {
            if l.start < safe && safe < l.end && self.leak != GuardMode::Log {
                safe = l.start.max(from);
            }
        }
        // Spans to act on, in text order: (start, end, replacement or None = block here).
        let mut edits: Vec<(usize, usize, Option<&'static str>, GuardKind, String)> = Vec::new();
        for m in pii.iter().filter(|m| m.end <= safe || (m.start < safe && at_end)) {
            let rep = (self.pii == GuardMode::Redact).then(|| m.kind.placeholder());
            edits.push((m.start, m.end, rep, GuardKind::OutputPii, m.kind.as_str().to_string()));
        }
        if matches!(self.leak, GuardMode::Block | GuardMode::Redact) {
            for l in self.leaks.iter().filter(|l| l.end > from) {
                // A leak is acted on as soon as it is seen, even inside the held-back window.
                let rep = (self.leak == GuardMode::Redact).then_some(LEAK_PLACEHOLDER);
                if rep.is_none() || l.end <= safe {
                    edits.push((l.start.max(from), l.end, rep, GuardKind::SystemPromptLeak, String::new()));
                }
            }
        }
        edits.sort_by_key(|e| e.0);
        let mut out = String::new();
        let mut at = from;
        for (start, end, rep, guard, detail) in edits {
            if start < at {
                // Overlaps an earlier edit, which covered the text up to `at`.
                at = at.max(end);
                continue;
            }
            match rep {
                None => {
                    out.push_str(&self.full[at..start]);
                    if guard == GuardKind::OutputPii {
                        self.act(guard, GuardMode::Block, detail);
                    }
                    self.released = self.full.len();
                    self.blocked = true;
                    return Released { text: out, blocked: true };
                }
                // Every replacement collected above ends by `safe`.
                Some(rep) => {
                    out.push_str(&self.full[at..start]);
                    out.push_str(rep);
                    if guard == GuardKind::OutputPii {
                        self.act(guard, GuardMode::Redact, detail);
                    }
                    at = end;
                }
            }
        }
        if at < safe {
            out.push_str(&self.full[at..safe]);
            at = safe;
        }
        self.released = at;
        Released { text: out, blocked: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(pii: GuardMode, leak: GuardMode, system: Option<&str>, canary: Option<&str>) -> OutputGuard {
        OutputGuard::new(OutputConfig {
            pii,
            leak,
            system_prompt: system.map(str::to_string),
            canary: canary.map(str::to_string),
            leak_min_words: 6,
        })
    }

    /// Feed `text` in pieces of `step` bytes (on char boundaries) and collect what comes out.
    fn stream(g: &mut OutputGuard, text: &str, step: usize) -> (String, bool) {
        let mut out = String::new();
        let mut i = 0;
        while i < text.len() {
            let mut j = (i + step).min(text.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            let r = g.push(&text[i..j]);
            out.push_str(&r.text);
            if r.blocked {
                return (out, true);
            }
            i = j;
        }
        let r = g.finish();
        out.push_str(&r.text);
        (out, r.blocked)
    }

    const SYSTEM: &str = "You are the support assistant of Acme Corp. Never offer refunds above fifty euros without a manager.";

    #[test]
    fn redaction_is_the_same_whatever_the_token_boundaries() {
        let text = "Write to jane.doe@example.com or call +44 20 7946 0958; card 4111 1111 1111 1111 is on file. Thanks!";
        let whole = detector().redact(text).0;
        for step in [1, 2, 3, 5, 8, 13, 200] {
            let mut g = guard(GuardMode::Redact, GuardMode::Off, None, None);
            let (out, blocked) = stream(&mut g, text, step);
            assert!(!blocked);
            assert_eq!(out, whole, "step {step}");
            let kinds: Vec<String> = g.actions().iter().map(|a| a.detail.clone()).collect();
            assert_eq!(kinds, ["email", "phone", "credit_card"], "step {step}");
            assert!(
                g.actions().iter().all(|a| a.action == GuardMode::Redact && a.guard == GuardKind::OutputPii)
            );
        }
        assert!(whole.contains("[EMAIL]") && whole.contains("[CREDIT_CARD]") && !whole.contains("jane.doe"));
    }

    #[test]
    fn text_without_findings_comes_out_unchanged_and_only_a_window_is_held() {
        let text = "The order ships on Monday. Returns are accepted within thirty days of delivery, in the original box.";
        let mut g =
            guard(GuardMode::Redact, GuardMode::Redact, Some(SYSTEM), Some("ft-canary-0123456789abcdef"));
        let mut out = String::new();
        for piece in text.split_inclusive(' ') {
            let r = g.push(piece);
            out.push_str(&r.text);
            // Never more held back than the PII window (the largest of the holds here) plus a word.
            assert!(text[..out.len()] == out[..]);
        }
        assert!(text.len() - out.len() <= PII_WINDOW + 12, "held {}", text.len() - out.len());
        out.push_str(&g.finish().text);
        assert_eq!(out, text);
        assert!(g.actions().is_empty());
    }

    #[test]
    fn block_ends_the_answer_before_the_personal_data() {
        let text = "Sure. The customer's address is jane.doe@example.com and more text follows here.";
        for step in [1, 4, 100] {
            let mut g = guard(GuardMode::Block, GuardMode::Off, None, None);
            let (out, blocked) = stream(&mut g, text, step);
            assert!(blocked, "step {step}");
            assert_eq!(out, "Sure. The customer's address is ", "step {step}");
            assert_eq!(g.actions().len(), 1);
            assert_eq!(g.actions()[0].action, GuardMode::Block);
            // After a block nothing more comes out.
            assert_eq!(g.push("more").text, "");
        }
    }

    #[test]
    fn log_mode_changes_nothing_holds_nothing_and_records_at_the_end() {
        let text = "Mail jane.doe@example.com please.";
        let mut g = guard(GuardMode::Log, GuardMode::Off, None, None);
        let r = g.push(text);
        assert_eq!(r.text, text);
        assert!(g.take_actions().is_empty());
        assert_eq!(g.finish().text, "");
        let a = g.take_actions();
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].guard, a[0].action, a[0].detail.as_str()),
            (GuardKind::OutputPii, GuardMode::Log, "email")
        );
        assert!(g.take_actions().is_empty(), "actions are taken once");
    }

    #[test]
    fn the_canary_is_redacted_or_blocked_even_split_across_tokens() {
        let c = canary(b"secret", SYSTEM);
        assert_eq!(c, canary(b"secret", SYSTEM), "deterministic");
        assert_ne!(c, canary(b"other", SYSTEM));
        assert!(with_canary(SYSTEM, &c).contains(&c));
        let text = format!("My instructions begin with [{c}] and then some.");
        for step in [1, 3, 7, 500] {
            let mut g = guard(GuardMode::Off, GuardMode::Redact, Some(SYSTEM), Some(&c));
            let (out, blocked) = stream(&mut g, &text, step);
            assert!(!blocked);
            assert_eq!(
                out,
                format!("My instructions begin with [{LEAK_PLACEHOLDER}] and then some."),
                "step {step}"
            );
            assert_eq!(g.actions().len(), 1);
            assert_eq!(g.actions()[0].detail, "canary");

            let mut g = guard(GuardMode::Off, GuardMode::Block, Some(SYSTEM), Some(&c));
            let (out, blocked) = stream(&mut g, &text, step);
            assert!(blocked);
            assert_eq!(out, "My instructions begin with [", "step {step}");
        }
    }

    #[test]
    fn a_verbatim_run_of_the_system_prompt_is_caught_case_and_spacing_aside() {
        let text = "Okay: you are the SUPPORT assistant of Acme   Corp, never offer refunds. Bye.";
        for step in [1, 2, 9, 1000] {
            let mut g = guard(GuardMode::Off, GuardMode::Redact, Some(SYSTEM), None);
            let (out, _) = stream(&mut g, text, step);
            assert_eq!(out, format!("Okay: {LEAK_PLACEHOLDER}. Bye."), "step {step}");
            assert_eq!(g.actions().len(), 1, "one leak, one action: {:?}", g.actions());
            assert!(g.actions()[0].detail.starts_with("verbatim span of 11 words"), "{:?}", g.actions());
        }
        // Five words in a row (fewer than leak_min_words = 6) are ordinary overlap.
        let mut g = guard(GuardMode::Off, GuardMode::Redact, Some(SYSTEM), None);
        let (out, _) = stream(&mut g, "I am the support assistant of a shop.", 2);
        assert_eq!(out, "I am the support assistant of a shop.");
        assert!(g.actions().is_empty());
    }

    #[test]
    fn leak_log_mode_records_without_holding_back() {
        let text = "you are the support assistant of Acme Corp.";
        let mut g = guard(GuardMode::Off, GuardMode::Log, Some(SYSTEM), None);
        let r = g.push(text);
        assert_eq!(r.text, text);
        g.finish();
        assert_eq!(g.actions().len(), 1);
        assert_eq!(g.actions()[0].action, GuardMode::Log);
    }

    #[test]
    fn both_off_is_a_pass_through() {
        let mut g = guard(GuardMode::Off, GuardMode::Off, Some(SYSTEM), Some("ft-canary-x"));
        assert!(g.is_passthrough());
        assert_eq!(g.push("jane.doe@example.com").text, "jane.doe@example.com");
        assert_eq!(g.finish(), Released::default());
        assert!(g.actions().is_empty());
    }

    #[test]
    fn multibyte_text_is_never_cut_inside_a_character() {
        let text = "Grüße aus Köln — 東京でお会いしましょう。メールは jane@example.com です。".repeat(3);
        for step in [1, 2, 5] {
            let mut g = guard(GuardMode::Redact, GuardMode::Redact, Some(SYSTEM), Some("ft-canary-0"));
            let (out, _) = stream(&mut g, &text, step);
            assert_eq!(out, detector().redact(&text).0);
        }
    }
}
