//! Splitting a document into overlapping chunks of at most `max_tokens` embedder tokens, cut at
//! the strongest boundary available in the second half of the window: before a Markdown heading,
//! else a paragraph break (blank line), else a sentence end (or line break), else between words,
//! and only inside a word when a single word is longer than a chunk.
//!
//! Defaults: 200 tokens with 40 of overlap. MiniLM reads 256 tokens (254 plus `[CLS]`/`[SEP]`), and
//! anything past that is cut off, so a chunk must fit with room for the few tokens that
//! re-tokenizing a slice can add at its edges; 200 leaves that room and keeps a chunk near one or
//! two paragraphs — the unit a citation should point at. 40 tokens (about two sentences) of
//! overlap keeps an answer that straddles a cut retrievable from both sides. A chunk that ends at
//! a paragraph break starts the next one afresh (no overlap): the text there changes subject.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::{RagError, Result};

pub const DEFAULT_CHUNK_TOKENS: usize = 200;
pub const DEFAULT_OVERLAP_TOKENS: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkConfig {
    pub max_tokens: usize,
    pub overlap_tokens: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self { max_tokens: DEFAULT_CHUNK_TOKENS, overlap_tokens: DEFAULT_OVERLAP_TOKENS }
    }
}

impl ChunkConfig {
    /// `window`: the embedder's `max_seq_length` (tokens including `[CLS]` and `[SEP]`).
    pub fn validate(&self, window: usize) -> std::result::Result<(), String> {
        let max = window.saturating_sub(2);
        if self.max_tokens < 8 || self.max_tokens > max {
            return Err(format!(
                "chunk size {} tokens: must be 8..={max} (the embedder reads {window})",
                self.max_tokens
            ));
        }
        if self.overlap_tokens * 2 > self.max_tokens {
            return Err(format!(
                "overlap {} tokens: at most half the chunk size ({})",
                self.overlap_tokens, self.max_tokens
            ));
        }
        Ok(())
    }
}

/// A piece of a document. Offsets are in Unicode scalar values (chars) into the document text,
/// end exclusive: `text == doc.chars().skip(start_char).take(end_char - start_char)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub start_char: usize,
    pub end_char: usize,
    pub n_tokens: usize,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Boundary {
    None,
    Word,
    Sentence,
    Paragraph,
    /// A paragraph break before a Markdown heading: a heading opens its chunk.
    Section,
}

/// Whether the line holding byte `at` is a Markdown ATX heading (`# Title`).
fn in_heading_line(text: &str, at: usize) -> bool {
    let start = text.get(..at).and_then(|t| t.rfind('\n')).map_or(0, |p| p + 1);
    text.get(start..).is_some_and(|l| l.trim_start().starts_with('#'))
}

/// Chunks `text` by the tokenizer's tokens (no special tokens; the tokenizer must not truncate).
pub fn chunk_text(tokenizer: &Tokenizer, text: &str, cfg: &ChunkConfig) -> Result<Vec<Chunk>> {
    let enc = tokenizer.encode(text, false).map_err(|e| RagError::Query {
        query: String::new(),
        reason: format!("tokenizing for chunking: {e}"),
    })?;
    let spans: Vec<(usize, usize)> = enc.get_offsets().to_vec();
    Ok(chunk_by_spans(text, &spans, cfg))
}

/// The chunker proper, over token byte spans `[start, end)` in `text` (in order).
pub fn chunk_by_spans(text: &str, spans: &[(usize, usize)], cfg: &ChunkConfig) -> Vec<Chunk> {
    let n = spans.len();
    if n == 0 {
        return Vec::new();
    }
    let max = cfg.max_tokens.max(1);
    let level = |i: usize| -> Boundary {
        if i == 0 || i >= n {
            return Boundary::Section;
        }
        let (prev_start, prev_end) = spans[i - 1];
        let start = spans[i].0;
        let gap = text.get(prev_end.min(start)..start).unwrap_or("");
        let newlines = gap.matches('\n').count();
        if newlines >= 2 {
            if in_heading_line(text, start) {
                Boundary::Section
            } else if in_heading_line(text, prev_start) {
                // Never leave a heading at the end of a chunk, cut off from its section.
                Boundary::Word
            } else {
                Boundary::Paragraph
            }
        } else if newlines == 1 {
            Boundary::Sentence
        } else if gap.is_empty() {
            Boundary::None
        } else {
            let prev = text.get(prev_start..prev_end).unwrap_or("");
            if prev.ends_with(['.', '!', '?', ';', '…', '。', '！', '？']) {
                Boundary::Sentence
            } else {
                Boundary::Word
            }
        }
    };
    let mut ranges = Vec::new();
    let mut s = 0;
    loop {
        if n - s <= max {
            ranges.push((s, n));
            break;
        }
        // Cut in the second half of the window at the strongest boundary, as late as possible.
        let lo = s + (max / 2).max(1);
        let e = (lo..=s + max).max_by_key(|&e| (level(e), e)).unwrap_or(s + max);
        ranges.push((s, e));
        if level(e) >= Boundary::Paragraph || cfg.overlap_tokens == 0 {
            s = e;
            continue;
        }
        // Start the next chunk up to `overlap` tokens back, at the strongest boundary there, as
        // early as possible: whole sentences are repeated when they fit, else words.
        let olo = e.saturating_sub(cfg.overlap_tokens).max(s + 1);
        s = (olo..e).max_by_key(|&b| (level(b), Reverse(b))).unwrap_or(e);
    }
    let char_starts: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
    let to_char = |byte: usize| char_starts.partition_point(|&b| b < byte);
    ranges
        .into_iter()
        .map(|(s, e)| {
            let b0 = spans[s].0;
            let b1 = spans[s..e].iter().map(|sp| sp.1).max().unwrap_or(b0).max(b0);
            Chunk {
                start_char: to_char(b0),
                end_char: to_char(b1),
                n_tokens: e - s,
                text: text.get(b0..b1).unwrap_or("").to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace "tokenizer" with '.' split off, enough to test the boundary logic.
    fn spans(text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            if c.is_whitespace() || c == '.' {
                if let Some(s) = start.take() {
                    out.push((s, i));
                }
                if c == '.' {
                    out.push((i, i + 1));
                }
            } else if start.is_none() {
                start = Some(i);
            }
        }
        if let Some(s) = start {
            out.push((s, text.len()));
        }
        out
    }

    fn cfg(max: usize, overlap: usize) -> ChunkConfig {
        ChunkConfig { max_tokens: max, overlap_tokens: overlap }
    }

    #[test]
    fn short_text_is_one_chunk_with_exact_span() {
        let t = "  Hello wörld.  ";
        let c = chunk_by_spans(t, &spans(t), &cfg(10, 2));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].text, "Hello wörld.");
        assert_eq!((c[0].start_char, c[0].end_char), (2, 14));
    }

    #[test]
    fn cuts_prefer_paragraphs_then_sentences() {
        let t = "a b c d e f.\n\ng h i j. k l m n o p q r s t";
        let c = chunk_by_spans(t, &spans(t), &cfg(10, 4));
        // The paragraph break after "f." (7 tokens) beats the later sentence end and word breaks.
        assert_eq!(c[0].text, "a b c d e f.");
        // No overlap across a paragraph break; the next cut falls after "j." (sentence end).
        assert!(c[1].text.starts_with("g h i j."), "{:?}", c[1].text);
        assert!(c.iter().all(|x| x.n_tokens <= 10));
        let last = c.last().map(|x| x.text.as_str());
        assert_eq!(last.map(|s| s.ends_with("s t")), Some(true));
    }

    #[test]
    fn overlap_starts_at_a_sentence_when_one_is_near() {
        let t = "w1 w2 w3 w4 w5 w6. w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18";
        let c = chunk_by_spans(t, &spans(t), &cfg(10, 5));
        // The sentence end beats the later word breaks.
        assert_eq!(c[0].text, "w1 w2 w3 w4 w5 w6.");
        // Overlap: up to 5 tokens back, from a word start (no sentence start in reach).
        assert!(c[1].text.starts_with("w3 w4 w5 w6."), "{:?}", c[1].text);
        let t = "a1. a2 a3. a4 a5 a6 a7 a8 a9 a10 a11 a12 a13 a14";
        let c = chunk_by_spans(t, &spans(t), &cfg(10, 5));
        // Cut after "a3." (sentence); the overlap repeats the whole sentence "a2 a3.".
        assert_eq!(c[0].text, "a1. a2 a3.");
        assert!(c[1].text.starts_with("a2 a3. a4"), "{:?}", c[1].text);
    }

    #[test]
    fn markdown_headings_open_chunks() {
        let t = "# Title\n\nw1 w2 w3.\n\n## Part\n\nw4 w5 w6 w7 w8 w9 w10 w11 w12 w13";
        let c = chunk_by_spans(t, &spans(t), &cfg(12, 3));
        // The cut falls before "## Part" (not after it, which is later but leaves it orphaned).
        assert_eq!(c[0].text, "# Title\n\nw1 w2 w3.");
        assert!(c[1].text.starts_with("## Part\n\nw4"), "{:?}", c[1].text);
    }

    #[test]
    fn every_token_is_covered_and_spans_match_text() {
        let t: String =
            (0..500).map(|i| if i % 37 == 36 { format!("s{i}.\n\n") } else { format!("tok{i} ") }).collect();
        let sp = spans(&t);
        let c = chunk_by_spans(&t, &sp, &cfg(50, 10));
        let chars: Vec<char> = t.chars().collect();
        let mut covered_to = 0;
        for ch in &c {
            assert!(ch.n_tokens <= 50 && ch.n_tokens > 0);
            let gap: String = chars[covered_to.min(ch.start_char)..ch.start_char].iter().collect();
            assert!(gap.trim().is_empty(), "text {gap:?} in no chunk, before {:?}", ch.text);
            covered_to = ch.end_char;
            let s: String = chars[ch.start_char..ch.end_char].iter().collect();
            assert_eq!(s, ch.text);
        }
        assert_eq!(covered_to, t.trim_end().chars().count());
    }

    #[test]
    fn config_limits_follow_the_window() {
        assert!(ChunkConfig::default().validate(256).is_ok());
        assert!(cfg(255, 0).validate(256).is_err());
        assert!(cfg(100, 60).validate(256).is_err());
    }
}
