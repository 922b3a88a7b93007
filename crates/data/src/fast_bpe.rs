//! An exact fast path for encoding with byte-level BPE tokenizers of the GPT-2 family (SmolLM2,
//! StarCoder, GPT-2): the same ids HF `tokenizers` gives for `encode(text, false)`, several times
//! faster, for the validator's token counts and the trainer's rendering.
//!
//! HF's pipeline for these tokenizers is: split out added tokens (`<|im_start|>`; leftmost-longest,
//! non-normalized ones first, then normalized ones in the gaps), split every numeric character on
//! its own (`Digits { individual_digits: true }`, SmolLM/StarCoder only), split with GPT-2's regex
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, map each piece's
//! bytes to GPT-2's byte alphabet and run the BPE model on it. Each step allocates (normalized
//! strings with alignments, offsets, a `String` per token) and the regex runs on a backtracking VM.
//! Here the splits are a hand-written scanner equivalent to that regex (character classes taken
//! from `regex-syntax`, the tables the regex uses), and each piece's ids come from a per-thread
//! cache filled by HF's own BPE model on a miss — so the merges are HF's, not a re-implementation.
//!
//! [`FastBpe::new`] recognises the tokenizer from its serialized configuration and returns `None`
//! for anything else (another normalizer or pre-tokenizer, BPE dropout, added tokens with
//! `lstrip`/`rstrip`/`single_word`, truncation, padding, a post-processor that could change ids or
//! offsets); callers then use HF. Equality with HF is tested on many generated strings.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use tokenizers::{Model, ModelWrapper};

/// Pieces cached per thread before the cache is emptied (keeps memory flat on open-ended text).
const CACHE_CAP: usize = 1 << 17;
/// Pieces longer than this (bytes) are not cached.
const CACHE_MAX_LEN: usize = 64;

/// Token ids, and for each a byte range of the text that contains it.
pub type IdsAndRanges = (Vec<u32>, Vec<(usize, usize)>);

/// A byte-level BPE tokenizer's encoder, for tokenizers whose pipeline is recognised.
pub struct FastBpe {
    id: u64,
    split_digits: bool,
    /// Added tokens matched on the raw text (`normalized: false`), then in the gaps, those
    /// matched on the normalized text (`normalized: true`; there is no normalizer, so the same).
    raw_added: AddedSet,
    norm_added: AddedSet,
    classes: CharClasses,
    byte_chars: [char; 256],
    model: ModelWrapper,
}

impl std::fmt::Debug for FastBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastBpe").field("split_digits", &self.split_digits).finish()
    }
}

/// Added tokens by first byte, longest first (leftmost-longest matching).
#[derive(Default)]
struct AddedSet {
    by_first: Vec<Vec<(Box<[u8]>, u32)>>,
    any: bool,
    /// The bytes that start an added token (`<` for ChatML's), to skip to with `memchr`.
    firsts: Vec<u8>,
}

impl AddedSet {
    fn new(tokens: Vec<(String, u32)>) -> Self {
        let mut by_first: Vec<Vec<(Box<[u8]>, u32)>> = (0..256).map(|_| Vec::new()).collect();
        let any = !tokens.is_empty();
        for (content, id) in tokens {
            if let Some(&b) = content.as_bytes().first() {
                by_first[b as usize].push((content.into_bytes().into_boxed_slice(), id));
            }
        }
        for v in &mut by_first {
            v.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        }
        let firsts = (0..=255u8).filter(|&b| !by_first[b as usize].is_empty()).collect();
        Self { by_first, any, firsts }
    }

    /// The first position at or after `i` where an added token may start.
    #[inline]
    fn next_start(&self, bytes: &[u8], i: usize) -> Option<usize> {
        let rest = &bytes[i..];
        let k = match *self.firsts.as_slice() {
            [] => None,
            [a] => memchr::memchr(a, rest),
            [a, b] => memchr::memchr2(a, b, rest),
            [a, b, c] => memchr::memchr3(a, b, c, rest),
            _ => rest.iter().position(|&b| !self.by_first[b as usize].is_empty()),
        };
        k.map(|k| i + k)
    }

    /// The added token at `i`, longest first: (its length, id).
    #[inline]
    fn match_at(&self, bytes: &[u8], i: usize) -> Option<(usize, u32)> {
        let cands = &self.by_first[bytes[i] as usize];
        cands.iter().find(|(t, _)| bytes[i..].starts_with(t)).map(|(t, id)| (t.len(), *id))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Space,
    Letter,
    Number,
    Other,
}

/// `\s`, `\p{L}`, `\p{N}` as the regex crate defines them (same Unicode tables).
struct CharClasses {
    ascii: [Class; 128],
    space: Vec<(u32, u32)>,
    letter: Vec<(u32, u32)>,
    number: Vec<(u32, u32)>,
}

fn class_ranges(pattern: &str) -> Option<Vec<(u32, u32)>> {
    let hir = regex_syntax::parse(pattern).ok()?;
    match hir.kind() {
        regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(c)) => {
            Some(c.ranges().iter().map(|r| (u32::from(r.start()), u32::from(r.end()))).collect())
        }
        _ => None,
    }
}

fn in_ranges(ranges: &[(u32, u32)], c: u32) -> bool {
    match ranges.binary_search_by(|&(s, _)| s.cmp(&c)) {
        Ok(_) => true,
        Err(0) => false,
        Err(i) => c <= ranges[i - 1].1,
    }
}

impl CharClasses {
    fn new() -> Option<Self> {
        let space = class_ranges(r"\s")?;
        let letter = class_ranges(r"\p{L}")?;
        let number = class_ranges(r"\p{N}")?;
        let mut c = Self { ascii: [Class::Other; 128], space, letter, number };
        for b in 0..128u32 {
            c.ascii[b as usize] = c.slow(b);
        }
        Some(c)
    }

    fn slow(&self, c: u32) -> Class {
        if in_ranges(&self.space, c) {
            Class::Space
        } else if in_ranges(&self.letter, c) {
            Class::Letter
        } else if in_ranges(&self.number, c) {
            Class::Number
        } else {
            Class::Other
        }
    }

    #[inline]
    fn of(&self, c: char) -> Class {
        let u = c as u32;
        if u < 128 { self.ascii[u as usize] } else { self.slow(u) }
    }
}

/// GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the others to U+0100 onwards.
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    out
}

/// The piece cache's hasher: xxh3 over a long piece's bytes; a [`ShortKey`]'s own finished
/// hash (one `write_u64`) is passed through.
#[derive(Default)]
struct Xxh(u64);

impl Hasher for Xxh {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_usize(&mut self, n: usize) {
        self.0 ^= n as u64;
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A piece of at most 16 bytes as two little-endian words (zero past its end) and its length:
/// compared and hashed as integers, with no pointer to follow (most pieces are a word with its
/// leading space; a byte-slice key cost a `memcmp` call and an xxh3 pass per lookup).
#[derive(Clone, Copy, PartialEq, Eq)]
struct ShortKey {
    lo: u64,
    hi: u64,
    len: u64,
}

impl ShortKey {
    const MAX: usize = 16;

    /// The key of `text[start..end]` (`end - start <= 16`).
    #[inline]
    fn new(text: &[u8], start: usize, end: usize) -> Self {
        let len = end - start;
        let mut w = [0u8; 16];
        if start + 16 <= text.len() {
            w.copy_from_slice(&text[start..start + 16]);
        } else {
            w[..len].copy_from_slice(&text[start..end]);
        }
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        let keep = |n: usize| if n >= 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 };
        Self {
            lo: word(&w[..8]) & keep(len),
            hi: word(&w[8..]) & keep(len.saturating_sub(8)),
            len: len as u64,
        }
    }
}

impl std::hash::Hash for ShortKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // A folded 128-bit product of the two words (as foldhash / wyhash mix): every input bit
        // reaches the high bits hashbrown takes its tags from and the low bits of its buckets.
        let p = u128::from(self.lo ^ 0x243f_6a88_85a3_08d3)
            * u128::from(self.hi ^ self.len.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1319_8a2e_0370_7344);
        state.write_u64((p as u64) ^ ((p >> 64) as u64));
    }
}

/// Up to this many ids are kept inline with a short piece; a piece with more goes to the long map.
const INLINE_IDS: usize = 5;

#[derive(Clone, Copy)]
struct InlineIds {
    n: u8,
    ids: [u32; INLINE_IDS],
}

/// Piece bytes → ids: short pieces keyed by value with their ids inline, longer ones by bytes.
#[derive(Default)]
struct PieceCache {
    short: HashMap<ShortKey, InlineIds, BuildHasherDefault<Xxh>>,
    long: HashMap<Box<[u8]>, Box<[u32]>, BuildHasherDefault<Xxh>>,
}

/// (encoder id, piece bytes → ids, scratch for a text's pieces). One encoder at a time per
/// thread; another empties it.
type ThreadCache = (u64, PieceCache, Vec<(usize, usize)>);

thread_local! {
    static CACHE: RefCell<ThreadCache> = RefCell::new((0, PieceCache::default(), Vec::new()));
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn is_byte_level(v: &Value) -> bool {
    v["type"] == "ByteLevel" && v["add_prefix_space"] == false && v["use_regex"] != false
}

fn char_at(s: &str, i: usize) -> Option<char> {
    s.get(i..).and_then(|t| t.chars().next())
}

impl FastBpe {
    /// The fast encoder of `tok`, when its pipeline is one this module reproduces exactly.
    pub fn new(tok: &tokenizers::Tokenizer) -> Option<Self> {
        if tok.get_encode_special_tokens() || tok.get_truncation().is_some() || tok.get_padding().is_some() {
            return None;
        }
        let json = serde_json::to_value(tok).ok()?;
        if !json["normalizer"].is_null() {
            return None;
        }
        let pre = &json["pre_tokenizer"];
        let split_digits = if is_byte_level(pre) {
            false
        } else if pre["type"] == "Sequence"
            && let Some([digits, bl]) = pre["pretokenizers"].as_array().map(Vec::as_slice)
            && digits["type"] == "Digits"
            && digits["individual_digits"] == true
            && is_byte_level(bl)
        {
            true
        } else {
            return None;
        };
        let post = &json["post_processor"];
        if !(post.is_null() || (post["type"] == "ByteLevel" && post["trim_offsets"] == false)) {
            return None;
        }
        let model = &json["model"];
        if model["type"] != "BPE" || !model["dropout"].is_null() {
            return None;
        }
        let (mut raw, mut norm) = (Vec::new(), Vec::new());
        for (id, t) in tok.get_added_tokens_decoder() {
            if t.single_word || t.lstrip || t.rstrip {
                return None;
            }
            if t.content.is_empty() {
                continue;
            }
            if t.normalized { norm.push((t.content, id)) } else { raw.push((t.content, id)) }
        }
        Some(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            split_digits,
            raw_added: AddedSet::new(raw),
            norm_added: AddedSet::new(norm),
            classes: CharClasses::new()?,
            byte_chars: byte_chars(),
            model: tok.get_model().clone(),
        })
    }

    /// `text`'s ids, and for each id the byte range of the piece it came from (an added token,
    /// or a pre-tokenizer piece: every token of a piece lies within it). `None` if the BPE model
    /// fails on a piece (HF would report the error).
    pub fn encode(&self, text: &str) -> Option<IdsAndRanges> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 8);
        let mut ranges = Vec::with_capacity(text.len() / 3 + 8);
        self.encode_into(text, &mut ids, &mut ranges).then_some((ids, ranges))
    }

    /// [`FastBpe::encode`] into `ids` and `ranges` (cleared first; buffers reused across rows);
    /// false where `encode` gives `None`.
    pub fn encode_into(&self, text: &str, ids: &mut Vec<u32>, ranges: &mut Vec<(usize, usize)>) -> bool {
        ids.clear();
        ranges.clear();
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != self.id {
                *c = (self.id, PieceCache::default(), Vec::new());
            }
            let (_, cache, pieces) = &mut *c;
            let mut fail = false;
            self.split_added(text, &self.raw_added, 0, &mut |start, end, added| {
                if fail {
                    return;
                }
                if let Some(id) = added {
                    ids.push(id);
                    ranges.push((start, end));
                    return;
                }
                self.split_added(&text[start..end], &self.norm_added, start, &mut |s, e, added2| {
                    if fail {
                        return;
                    }
                    if let Some(id) = added2 {
                        ids.push(id);
                        ranges.push((s, e));
                        return;
                    }
                    pieces.clear();
                    self.pre_tokenize(&text[s..e], s, pieces);
                    for &(ps, pe) in pieces.iter() {
                        if !self.piece_ids(cache, text.as_bytes(), ps, pe, ids) {
                            fail = true;
                            return;
                        }
                        ranges.resize(ids.len(), (ps, pe));
                    }
                });
            });
            !fail
        })
    }

    /// Calls `f(start, end, Some(id))` for each added token of `set` in `s` and
    /// `f(start, end, None)` for the text between them (offsets shifted by `base`).
    fn split_added(
        &self,
        s: &str,
        set: &AddedSet,
        base: usize,
        f: &mut dyn FnMut(usize, usize, Option<u32>),
    ) {
        let bytes = s.as_bytes();
        if !set.any {
            if !s.is_empty() {
                f(base, base + s.len(), None);
            }
            return;
        }
        let (mut at, mut i) = (0, 0);
        while i < bytes.len() {
            let Some(next) = set.next_start(bytes, i) else { break };
            i = next;
            match set.match_at(bytes, i) {
                Some((len, id)) => {
                    if at < i {
                        f(base + at, base + i, None);
                    }
                    f(base + i, base + i + len, Some(id));
                    i += len;
                    at = i;
                }
                None => i += 1,
            }
        }
        if at < bytes.len() {
            f(base + at, base + bytes.len(), None);
        }
    }

    /// Pre-tokenizer pieces of `s` (no added tokens in it) as absolute byte ranges.
    fn pre_tokenize(&self, s: &str, base: usize, out: &mut Vec<(usize, usize)>) {
        if !self.split_digits {
            self.gpt2_split(s, base, out);
            return;
        }
        let b = s.as_bytes();
        let (mut at, mut i) = (0, 0);
        while i < b.len() {
            // `char::is_numeric` is `is_ascii_digit` below 128.
            let (numeric, len) = match b[i] {
                c if c < 128 => (c.is_ascii_digit(), 1),
                _ => char_at(s, i).map_or((false, 1), |c| (c.is_numeric(), c.len_utf8())),
            };
            if numeric {
                self.gpt2_split(&s[at..i], base + at, out);
                out.push((base + i, base + i + len));
                at = i + len;
            }
            i += len;
        }
        self.gpt2_split(&s[at..], base + at, out);
    }

    /// GPT-2's split regex (see the module docs), scanning instead of backtracking.
    fn gpt2_split(&self, s: &str, base: usize, out: &mut Vec<(usize, usize)>) {
        let b = s.as_bytes();
        let n = b.len();
        let cls = &self.classes;
        // End of the run of characters of class `k` starting at `i`.
        let run = |mut i: usize, k: Class| -> usize {
            while i < n {
                if b[i] < 128 {
                    if cls.ascii[b[i] as usize] != k {
                        break;
                    }
                    i += 1;
                } else {
                    match char_at(s, i) {
                        Some(c) if cls.of(c) == k => i += c.len_utf8(),
                        _ => break,
                    }
                }
            }
            i
        };
        let mut i = 0;
        while i < n {
            let Some(c) = char_at(s, i) else { break };
            if c == '\'' {
                let rest = &b[i + 1..];
                let k = if rest.starts_with(b"re") || rest.starts_with(b"ve") || rest.starts_with(b"ll") {
                    3
                } else if matches!(rest.first(), Some(b's' | b't' | b'm' | b'd')) {
                    2
                } else {
                    0
                };
                if k > 0 {
                    out.push((base + i, base + i + k));
                    i += k;
                    continue;
                }
            }
            let k = cls.of(c);
            if c == ' '
                && let Some(c2) = char_at(s, i + 1)
                && cls.of(c2) != Class::Space
            {
                let j = run(i + 1, cls.of(c2));
                out.push((base + i, base + j));
                i = j;
                continue;
            }
            if k != Class::Space {
                let j = run(i, k);
                out.push((base + i, base + j));
                i = j;
                continue;
            }
            // Whitespace: `\s+(?!\S)` takes the run, less its last character when something
            // follows; a single whitespace character before text is `\s+`.
            let j = run(i, Class::Space);
            let end = if j == n {
                j
            } else {
                let last = s[i..j].chars().next_back().map_or(0, char::len_utf8);
                if j - last > i { j - last } else { j }
            };
            out.push((base + i, base + end));
            i = end;
        }
    }

    /// Appends the ids of the piece `text[start..end]`; false if the model fails on it.
    fn piece_ids(
        &self,
        cache: &mut PieceCache,
        text: &[u8],
        start: usize,
        end: usize,
        ids: &mut Vec<u32>,
    ) -> bool {
        let piece = &text[start..end];
        let short = (piece.len() <= ShortKey::MAX).then(|| ShortKey::new(text, start, end));
        if let Some(hit) = short.as_ref().and_then(|key| cache.short.get(key)) {
            ids.extend_from_slice(&hit.ids[..usize::from(hit.n)]);
            return true;
        }
        // (A short piece with more than `INLINE_IDS` ids is kept here too.)
        if let Some(hit) = cache.long.get(piece) {
            ids.extend_from_slice(hit);
            return true;
        }
        let mapped: String = piece.iter().map(|&b| self.byte_chars[b as usize]).collect();
        let Ok(toks) = self.model.tokenize(&mapped) else { return false };
        let from = ids.len();
        ids.extend(toks.iter().map(|t| t.id));
        let new = &ids[from..];
        if piece.len() <= CACHE_MAX_LEN {
            if cache.short.len() + cache.long.len() >= CACHE_CAP {
                cache.short.clear();
                cache.long.clear();
            }
            match short {
                Some(key) if new.len() <= INLINE_IDS => {
                    let mut inline = InlineIds { n: new.len() as u8, ids: [0; INLINE_IDS] };
                    inline.ids[..new.len()].copy_from_slice(new);
                    cache.short.insert(key, inline);
                }
                _ => {
                    cache.long.insert(piece.into(), new.into());
                }
            }
        }
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ferrotune_model::tokenizer::{GgufVocab, tokenizer_json_from_gguf};
    use proptest::prelude::*;

    /// A byte-level BPE with every byte, merges across the places the pre-tokenizer splits
    /// (space+word, whitespace runs, digits, contractions, multi-byte characters), ChatML
    /// specials and two overlapping user-defined added tokens.
    pub fn merged_tokenizer(pre: &str) -> tokenizers::Tokenizer {
        #[allow(clippy::expect_used)]
        serde_json::from_value(merged_tokenizer_json(pre)).expect("tokenizer")
    }

    pub fn merged_tokenizer_json(pre: &str) -> Value {
        let bc = byte_chars();
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
            "<tool>".into(),
            "<tool_call>".into(),
        ];
        let mut types = vec![3i64, 3, 3, 4, 4];
        for c in bc {
            tokens.push(c.to_string());
            types.push(1);
        }
        let m = |s: &[u8]| -> String { s.iter().map(|&b| bc[b as usize]).collect() };
        let pairs: &[(&[u8], &[u8])] = &[
            (b" ", b"t"),
            (b"t", b"h"),
            (b" t", b"h"),
            (b" th", b"e"),
            (b"e", b"r"),
            (b"\n", b"\n"),
            (b" ", b" "),
            (b"  ", b"  "),
            (b" ", b"\n"),
            (b"\n", b" "),
            (b"'", b"s"),
            (b"'", b"t"),
            (b"1", b"2"),
            (b" ", b"1"),
            (b".", b"."),
            (b"..", b"."),
            (b"\xc3", b"\xa9"),
            (b"a", b"b"),
            (b" ", b"a"),
            (b"?", b"!"),
            (b"\t", b"\t"),
            (b"\r", b"\n"),
            (b"\xf0", b"\x9f"),
            (b"\xf0\x9f", b"\x98"),
            (b"h", b"i"),
            (b" ", b"hi"),
            (b"o", b"n"),
            (b"on", b"e"),
            (b"\xc2", b"\xa0"),
        ];
        let mut merges = Vec::new();
        for (a, b) in pairs {
            let (ma, mb) = (m(a), m(b));
            let joined = format!("{ma}{mb}");
            if !tokens.contains(&joined) {
                tokens.push(joined);
                types.push(1);
            }
            merges.push(format!("{ma} {mb}"));
        }
        let v = GgufVocab { model: "gpt2", pre, tokens, token_types: types, merges };
        #[allow(clippy::expect_used)]
        tokenizer_json_from_gguf(&v).expect("tokenizer json")
    }

    /// HF's ids, and that each HF token's offsets lie within the range the fast path gives it.
    pub fn assert_same(fast: &FastBpe, hf: &tokenizers::Tokenizer, text: &str) {
        let enc = hf.encode(text, false).expect("hf encode");
        let (ids, ranges) = fast.encode(text).expect("fast encode");
        assert_eq!(ids, enc.get_ids(), "ids differ for {text:?}");
        for (k, (&(s, e), &(hs, he))) in ranges.iter().zip(enc.get_offsets()).enumerate() {
            assert!(s <= hs && he <= e, "token {k} of {text:?}: HF offsets {hs}..{he} outside {s}..{e}");
        }
    }

    const FRAGMENTS: &[&str] = &[
        "a",
        "b",
        "hi",
        "the",
        "The",
        "one",
        "x",
        " ",
        "  ",
        "   ",
        "\n",
        "\n\n",
        "\t",
        "\r\n",
        " \n",
        "\n ",
        "'s",
        "'t",
        "'re",
        "'ve",
        "'m",
        "'ll",
        "'d",
        "'S",
        "'",
        "''",
        "1",
        "12",
        "123",
        "0",
        ".",
        "...",
        "?!",
        "-",
        "é",
        "😀",
        "中文",
        "½",
        "Ⅻ",
        "٣",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
        "ς",
        "Σ",
        "e\u{301}",
        "<|im_start|>",
        "<|im_end|>",
        "<tool>",
        "<tool_call>",
        "<tool",
        "<|",
        "$",
        "_",
        "\u{0}",
        "\u{85}",
        "ÿ",
        "ab",
        " ab",
        "?",
        "!!",
        "\u{200b}",
    ];

    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(0..FRAGMENTS.len(), 0..40)
            .prop_map(|ix| ix.into_iter().map(|i| FRAGMENTS[i]).collect())
    }

    #[test]
    fn the_synthetic_tokenizers_are_recognised() {
        for pre in ["smollm", "gpt2"] {
            let hf = merged_tokenizer(pre);
            let fast = FastBpe::new(&hf).expect("recognised");
            assert_eq!(fast.split_digits, pre == "smollm");
        }
        // Llama 3's pre-tokenizer is a different regex: not recognised, HF is used.
        assert!(FastBpe::new(&merged_tokenizer("llama-bpe")).is_none());
    }

    #[test]
    fn short_keys_depend_on_the_piece_alone() {
        let text = b"xx hello\0\0 world, and some more text after it";
        // The same bytes, read through the 16-byte window or copied at the end of a text.
        assert!(ShortKey::new(text, 2, 8) == ShortKey::new(b" hello", 0, 6));
        // Zero bytes are part of the piece: the length tells them from padding.
        assert!(ShortKey::new(text, 2, 8) != ShortKey::new(text, 2, 10));
        assert!(ShortKey::new(text, 10, 16) != ShortKey::new(text, 2, 8));
        for end in 11..=27 {
            assert!(ShortKey::new(text, 11, end) == ShortKey::new(&text[11..end], 0, end - 11), "{end}");
        }
    }

    #[test]
    fn fixed_strings_encode_as_hf_does() {
        for pre in ["smollm", "gpt2"] {
            let hf = merged_tokenizer(pre);
            let fast = FastBpe::new(&hf).expect("recognised");
            for t in [
                "",
                " ",
                "hello world",
                "  hi",
                "hi  ",
                "a\n\n b",
                "it's 12 o'clock",
                "x'S 'Re",
                "<|im_start|>user\n  two spaces<|im_end|>\n",
                "<tool_call><tool><tool_cal",
                "é😀 中文 ½Ⅻ٣ 123 4",
                "\u{a0}\u{a0}x",
                "tabs\t\tand\r\nCRLF",
                "   \n\n   end",
                "...?!...",
            ] {
                assert_same(&fast, &hf, t);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn generated_strings_encode_as_hf_does(t in text()) {
            thread_local! {
                static TOKS: Vec<(tokenizers::Tokenizer, FastBpe)> = ["smollm", "gpt2"].iter().map(|p| {
                    let hf = merged_tokenizer(p);
                    let fast = FastBpe::new(&hf).expect("recognised");
                    (hf, fast)
                }).collect();
            }
            TOKS.with(|toks| for (hf, fast) in toks { assert_same(fast, hf, &t) });
        }

        #[test]
        fn arbitrary_unicode_encodes_as_hf_does(t in "\\PC{0,60}") {
            thread_local! {
                static TOK: (tokenizers::Tokenizer, FastBpe) = {
                    let hf = merged_tokenizer("smollm");
                    let fast = FastBpe::new(&hf).expect("recognised");
                    (hf, fast)
                };
            }
            TOK.with(|(hf, fast)| assert_same(fast, hf, &t));
        }
    }

    #[test]
    fn characters_whose_numeric_class_differs_between_std_and_the_regex_tables_encode_as_hf_does() {
        // `Digits` splits on `char::is_numeric` (std's Unicode version), the regex's `\p{N}` is
        // regex-syntax's table; where the two disagree (characters newer than one of them) the
        // scanner must still follow each stage's own rule.
        let c = CharClasses::new().expect("classes");
        let odd: Vec<char> = (0..=0x10ffffu32)
            .filter_map(char::from_u32)
            .filter(|ch| ch.is_numeric() != (c.of(*ch) == Class::Number))
            .collect();
        let hf = merged_tokenizer("smollm");
        let fast = FastBpe::new(&hf).expect("recognised");
        for ch in odd {
            for t in
                [format!("{ch}"), format!("a{ch}{ch}b"), format!(" {ch}1 {ch}x"), format!("1{ch}2 ?{ch}!")]
            {
                assert_same(&fast, &hf, &t);
            }
        }
    }
}
