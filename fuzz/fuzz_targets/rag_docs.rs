//! A knowledge-base document of arbitrary bytes (text, Markdown, HTML or JSONL, by the first
//! byte) through ingest's reader (`source::collect`), then each document through the chunker
//! over its word spans. Every chunk's text is the span of its document that its offsets name.
#![no_main]
#[path = "common.rs"]
mod common;

use ferrotune_rag::ChunkConfig;
use ferrotune_rag::chunk::chunk_by_spans;
use ferrotune_rag::source::collect;
use libfuzzer_sys::fuzz_target;

/// Byte spans of the whitespace-separated words: the chunker's input without a tokenizer.
fn word_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len()));
    }
    spans
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = common::mode(data) else { return };
    let name = ["doc.txt", "doc.md", "doc.html", "doc.jsonl"][mode as usize % 4];
    let dir = common::fresh_dir("kb");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    let Ok(collected) = collect(std::slice::from_ref(&path)) else { return };
    let max_tokens = 8 + (mode as usize >> 2) % 40;
    let cfg = ChunkConfig { max_tokens, overlap_tokens: max_tokens / 3 };
    for doc in &collected.docs {
        for chunk in chunk_by_spans(&doc.text, &word_spans(&doc.text), &cfg) {
            let piece: String =
                doc.text.chars().skip(chunk.start_char).take(chunk.end_char - chunk.start_char).collect();
            assert_eq!(piece, chunk.text, "a chunk's text is not its span of the document");
            assert!(chunk.n_tokens <= max_tokens, "a chunk is longer than max_tokens");
        }
    }
});
