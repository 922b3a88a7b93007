//! Records → `input_ids` + `labels` for training, with the model's own chat template.
//!
//! Targets are found by rendering prefixes of the conversation: for assistant turn `i`, the text
//! of `messages[..i]` with the generation prompt is what comes before the answer, and the text of
//! `messages[..=i]` ends right after it, so the answer is the difference. Both must be prefixes
//! of the whole render (true of every well-behaved template; a template that rewrites earlier
//! turns is refused with the turn named). The whole text is tokenized once and tokens are
//! assigned to spans by their byte offsets, so tokenization at span edges matches the full render.
//!
//! Labels are aligned with `input_ids` (HF convention: the loss shifts by one) and are
//! [`IGNORE_INDEX`] where masked. Loss covers assistant turns (not those with `weight: 0`), or
//! everything with `train_on_inputs` (still not `weight: 0` turns). EOS belongs to every target
//! and is never masked: when the template ends a turn with an EOS token (ChatML's `<|im_end|>`,
//! Llama 3's `<|eot_id|>`) the target runs through it and what follows it in the turn (the
//! newline) is masked; when a turn's text holds no EOS token, one is inserted after it. Text
//! records are trained on every token, with BOS when the model wants it and EOS appended.

use std::sync::Arc;

use ferrotune_model::loaded::TextModel;
use ferrotune_model::{ChatTemplate, LoadedModel, Message, Tokenizer};
use serde::Serialize;

use crate::chatml::ChatMl;
use crate::error::{DataError, Result};
use crate::fast_bpe::{FastBpe, IdsAndRanges};
use crate::record::{Body, Record, Role, Turn};

/// Label value of positions without loss (PyTorch's `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i64 = -100;

#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions {
    /// Loss on prompts too (system and user turns, template markup), not only on answers.
    pub train_on_inputs: bool,
}

/// A rendered record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    pub input_ids: Vec<u32>,
    /// Same length as `input_ids`; `IGNORE_INDEX` where masked, else the token id.
    pub labels: Vec<i64>,
    /// The template's text (without EOS tokens that were inserted).
    pub text: String,
}

impl Rendered {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Positions that carry loss.
    pub fn target_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// What rendering needs of a model: its tokenizer, chat template and EOS ids.
#[derive(Debug, Clone)]
pub struct Renderer {
    tokenizer: Tokenizer,
    template: Option<Arc<ChatTemplate>>,
    eos_ids: Vec<u32>,
    /// The EOS token appended to text records and inserted after turns without one.
    eos: u32,
    /// Exact fast paths (tested equal to the general ones); `None` where not recognised.
    fast_bpe: Option<Arc<FastBpe>>,
    chatml: Option<ChatMl>,
}

impl Renderer {
    /// `eos_ids` are the ids that end a turn (the tokenizer's EOS token is added to them); the
    /// first of the tokenizer's EOS token or `eos_ids` is the one inserted where needed.
    pub fn new(
        tokenizer: Tokenizer,
        template: Option<Arc<ChatTemplate>>,
        mut eos_ids: Vec<u32>,
    ) -> Result<Self> {
        let tok_eos = tokenizer.eos_token().and_then(|t| tokenizer.token_to_id(t));
        let eos = tok_eos.or_else(|| eos_ids.first().copied()).ok_or(DataError::InvalidOption {
            option: "model",
            reason: "the tokenizer has no EOS token and none was given: targets cannot end with EOS".into(),
        })?;
        eos_ids.extend(tok_eos);
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let fast_bpe = FastBpe::new(tokenizer.inner()).map(Arc::new);
        let chatml = template.as_deref().and_then(ChatMl::recognise);
        Ok(Self { tokenizer, template, eos_ids, eos, fast_bpe, chatml })
    }

    /// The same renderer without its fast paths (the reference they are tested against).
    pub fn without_fast_paths(mut self) -> Self {
        self.fast_bpe = None;
        self.chatml = None;
        self
    }

    /// Whether the fast tokenizer and the fast template are in use.
    pub fn fast_paths(&self) -> (bool, bool) {
        (self.fast_bpe.is_some(), self.chatml.is_some())
    }

    /// `text`'s ids and, per id, a byte range containing the token: HF's offsets, or (fast path)
    /// the range of the pre-tokenizer piece the token came from. A token belongs to a span when
    /// its range overlaps it, which is the same for a piece's tokens and the piece unless the
    /// piece straddles a span edge; then HF's own offsets are used.
    fn encode_with_ranges(
        &self,
        record: &Record,
        text: &str,
        spans: &[(usize, usize, bool)],
        (ids, ranges): &mut IdsAndRanges,
    ) -> Result<()> {
        if self.fast_bpe.as_ref().is_some_and(|f| f.encode_into(text, ids, ranges)) {
            let straddles = |&(s, e): &(usize, usize)| {
                spans.iter().any(|&(a, b, _)| (s < a && a < e) || (s < b && b < e))
            };
            if !ranges.iter().any(straddles) {
                return Ok(());
            }
        }
        let enc = self
            .tokenizer
            .inner()
            .encode(text, false)
            .map_err(|e| Self::err(record, "", format!("tokenizer: {e}")))?;
        ids.clear();
        ids.extend_from_slice(enc.get_ids());
        ranges.clear();
        ranges.extend_from_slice(enc.get_offsets());
        Ok(())
    }

    fn render_chat(
        &self,
        template: &ChatTemplate,
        turns: &[Turn],
        generation: bool,
    ) -> ferrotune_model::Result<String> {
        if let Some(fast) = &self.chatml {
            let mut out =
                String::with_capacity(turns.iter().map(|t| t.content.len() + 24).sum::<usize>() + 64);
            fast.render_into(
                turns.iter().map(|t| (t.role.as_str(), t.content.as_str())),
                generation,
                &mut out,
            );
            return Ok(out);
        }
        let messages: Vec<Message> =
            turns.iter().map(|t| Message::new(t.role.as_str(), t.content.clone())).collect();
        template.render(&messages, generation)
    }

    pub fn from_model(m: &LoadedModel) -> Result<Self> {
        Self::new(m.tokenizer.clone(), m.chat_template.clone(), m.eos_ids.clone())
    }

    /// From a model's tokenizer and template alone (`ferrotune_model::loaded::load_text`: no
    /// weights are read).
    pub fn from_text_model(m: &TextModel) -> Result<Self> {
        Self::new(m.tokenizer.clone(), m.chat_template.clone(), m.eos_ids.clone())
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    fn err(record: &Record, field: impl Into<String>, reason: impl Into<String>) -> DataError {
        DataError::InvalidRecord {
            file: record.origin.file.to_string(),
            line: record.origin.line,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Render `record` for training.
    pub fn render(&self, record: &Record, opts: &RenderOptions) -> Result<Rendered> {
        let mut out = (Vec::new(), Vec::new());
        let text = self.render_into(record, opts, &mut out)?;
        Ok(Rendered { input_ids: out.0, labels: out.1, text })
    }

    /// The number of tokens of [`Renderer::render`]'s output and of those with loss, without
    /// building it (what the validator counts).
    pub fn count(&self, record: &Record, opts: &RenderOptions) -> Result<(usize, usize)> {
        let mut n = Count::default();
        self.render_into(record, opts, &mut n)?;
        Ok((n.tokens, n.targets))
    }

    /// Renders `record` token by token into `out`; returns the template's text.
    fn render_into(&self, record: &Record, opts: &RenderOptions, out: &mut impl TokenSink) -> Result<String> {
        if let Body::Text(text) = &record.body {
            let ids = self.tokenizer.encode(text, true)?;
            out.reserve(ids.len() + 1);
            ids.iter().for_each(|&i| out.push(i, true));
            if ids.last() != Some(&self.eos) {
                out.push(self.eos, true);
            }
            return Ok(text.clone());
        }
        let template = self.template.as_ref().ok_or_else(|| {
            Self::err(
                record,
                "",
                "the model has no chat template; use text records or a model with a template",
            )
        })?;
        let turns = record.turns();
        let full = self
            .render_chat(template, &turns, false)
            .map_err(|e| Self::err(record, "messages", e.to_string()))?;

        // Byte spans of the assistant turns in `full`, and whether each is trained on.
        let mut spans: Vec<(usize, usize, bool)> = Vec::with_capacity(turns.len());
        let pairs: Vec<(&str, &str)> = match &self.chatml {
            Some(_) => turns.iter().map(|t| (t.role.as_str(), t.content.as_str())).collect(),
            None => Vec::new(),
        };
        for (i, t) in turns.iter().enumerate() {
            if t.role != Role::Assistant {
                continue;
            }
            let field = || format!("messages[{i}]");
            let fast = self.chatml.as_ref().map(|c| c.assistant_span(&pairs, i));
            let span = match fast {
                Some(span) => span,
                None => {
                    let before = self
                        .render_chat(template, &turns[..i], true)
                        .map_err(|e| Self::err(record, field(), e.to_string()))?;
                    let through = self
                        .render_chat(template, &turns[..=i], false)
                        .map_err(|e| Self::err(record, field(), e.to_string()))?;
                    (through.starts_with(&before) && full.starts_with(&through))
                        .then_some((before.len(), through.len()))
                }
            };
            let Some((before, through)) = span else {
                return Err(Self::err(
                    record,
                    field(),
                    "the chat template does not render this conversation's prefixes as prefixes of the whole \
                     (it changes earlier text when later turns are added, e.g. a default system prompt before \
                     a leading assistant turn), so the answer cannot be located; start the conversation with a \
                     system or user message",
                ));
            };
            spans.push((before, through, t.is_target()));
        }

        // The ids and their byte ranges, in per-thread buffers reused from row to row.
        let mut scratch = TOKENS.with(|t| std::mem::take(&mut *t.borrow_mut()));
        let done = self
            .encode_with_ranges(record, &full, &spans, &mut scratch)
            .map(|()| self.assign(&scratch, &spans, opts, out));
        if scratch.0.capacity() > 1 << 20 {
            scratch = IdsAndRanges::default(); // a huge row's buffers are not kept
        }
        TOKENS.with(|t| *t.borrow_mut() = scratch);
        done?;
        Ok(full)
    }

    /// Hands `out` each token of `full`'s encoding, with its loss flag (see the module docs).
    fn assign(
        &self,
        (ids, offsets): &IdsAndRanges,
        spans: &[(usize, usize, bool)],
        opts: &RenderOptions,
        out: &mut impl TokenSink,
    ) {
        // Which span each token falls in (a token overlapping a span's bytes belongs to it).
        let span_of = |k: usize| -> Option<usize> {
            let (s, e) = offsets[k];
            spans.iter().position(|&(a, b, _)| s < b && a < e.max(s + 1))
        };
        out.reserve(ids.len() + spans.len());
        let mut k = 0;
        while k < ids.len() {
            let Some(si) = span_of(k) else {
                out.push(ids[k], opts.train_on_inputs);
                k += 1;
                continue;
            };
            let start = k;
            while k < ids.len() && span_of(k) == Some(si) {
                k += 1;
            }
            let toks = &ids[start..k];
            let trained = spans[si].2;
            match toks.iter().rposition(|t| self.eos_ids.contains(t)) {
                Some(last_eos) => {
                    for (j, &t) in toks.iter().enumerate() {
                        let in_target = j <= last_eos || opts.train_on_inputs;
                        out.push(t, trained && in_target);
                    }
                }
                None => {
                    for &t in toks {
                        out.push(t, trained);
                    }
                    out.push(self.eos, trained);
                }
            }
        }
    }
}

thread_local! {
    static TOKENS: std::cell::RefCell<IdsAndRanges> = std::cell::RefCell::default();
}

/// Where [`Renderer::render_into`] puts each token and whether it carries loss.
trait TokenSink {
    fn reserve(&mut self, n: usize);
    fn push(&mut self, id: u32, loss: bool);
}

/// `input_ids` and `labels`.
impl TokenSink for (Vec<u32>, Vec<i64>) {
    fn reserve(&mut self, n: usize) {
        self.0.reserve(n);
        self.1.reserve(n);
    }

    fn push(&mut self, id: u32, loss: bool) {
        self.0.push(id);
        self.1.push(if loss { i64::from(id) } else { IGNORE_INDEX });
    }
}

#[derive(Default)]
struct Count {
    tokens: usize,
    targets: usize,
}

impl TokenSink for Count {
    fn reserve(&mut self, _: usize) {}

    fn push(&mut self, _: u32, loss: bool) {
        self.tokens += 1;
        self.targets += usize::from(loss);
    }
}

/// Render one record for training: the trainer's entry point (see the module docs for the rules).
pub fn render_for_training(record: &Record, renderer: &Renderer, opts: &RenderOptions) -> Result<Rendered> {
    renderer.render(record, opts)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ferrotune_model::tokenizer::{GgufVocab, tokenizer_json_from_gguf};

    pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// A byte-level BPE over single characters (every printable ASCII character is a token) with
    /// ChatML's specials: 0 `<|endoftext|>`, 1 `<|im_start|>`, 2 `<|im_end|>`.
    pub fn tiny_tokenizer() -> Tokenizer {
        let mut tokens: Vec<String> =
            vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
        let mut types = vec![3i64, 3, 3];
        for b in 33u8..127 {
            tokens.push((b as char).to_string());
            types.push(1);
        }
        tokens.extend(["Ġ", "Ċ"].map(String::from));
        types.extend([1, 1]);
        let v = GgufVocab { model: "gpt2", pre: "smollm", tokens, token_types: types, merges: vec![] };
        #[allow(clippy::expect_used)]
        let json = tokenizer_json_from_gguf(&v).expect("tokenizer json");
        #[allow(clippy::expect_used)]
        Tokenizer::from_json(&json).expect("tokenizer").with_special(None, Some("<|im_end|>".into()), false)
    }

    pub fn renderer(template: &str, eos: &str) -> Renderer {
        let tok = tiny_tokenizer();
        #[allow(clippy::expect_used)]
        let t = ChatTemplate::new(template, "", eos).expect("template");
        #[allow(clippy::expect_used)]
        Renderer::new(tok, Some(Arc::new(t)), vec![]).expect("renderer")
    }

    /// The text of the labelled tokens, with masked runs shown as `_`.
    fn loss_text(r: &Renderer, out: &Rendered) -> String {
        let mut s = String::new();
        for (&id, &l) in out.input_ids.iter().zip(&out.labels) {
            if l == IGNORE_INDEX {
                if !s.ends_with('_') {
                    s.push('_');
                }
            } else {
                s.push_str(&r.tokenizer().decode(&[id], false).unwrap_or_default());
            }
        }
        s
    }

    fn convo() -> Record {
        Record::chat(vec![
            Turn::new(Role::System, "S"),
            Turn::new(Role::User, "q1"),
            Turn::new(Role::Assistant, "a1"),
            Turn::new(Role::User, "q2"),
            Turn::new(Role::Assistant, "a2"),
        ])
    }

    const SMOL: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    /// A renderer over the BPE with merges across pre-tokenizer splits (see `fast_bpe`).
    fn merged_renderer(template: &str) -> Renderer {
        let json = crate::fast_bpe::tests::merged_tokenizer_json("smollm");
        #[allow(clippy::expect_used)]
        let tok = Tokenizer::from_json(&json).expect("tokenizer").with_special(
            None,
            Some("<|im_end|>".into()),
            false,
        );
        #[allow(clippy::expect_used)]
        let t = ChatTemplate::new(template, "", "<|im_end|>").expect("template");
        #[allow(clippy::expect_used)]
        Renderer::new(tok, Some(Arc::new(t)), vec![]).expect("renderer")
    }

    #[test]
    fn chatml_and_smollm2_templates_and_the_bpe_take_the_fast_paths() {
        for t in [CHATML, SMOL] {
            assert_eq!(merged_renderer(t).fast_paths(), (true, true), "{t}");
        }
        let plain = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% endfor %}";
        assert_eq!(merged_renderer(plain).fast_paths(), (true, false));
    }

    const PIECES: &[&str] = &[
        "a",
        "hi",
        " the",
        "  ",
        "   ",
        "\n",
        "\n\n",
        " \n",
        "\t",
        "'s",
        "12",
        " 3",
        "é😀",
        "中",
        "<|im_end|>",
        "<|im_start|>",
        "x",
        "?!",
        "\u{a0}",
    ];

    fn conversation() -> impl proptest::strategy::Strategy<Value = Record> {
        use proptest::prelude::*;
        let content = proptest::collection::vec(0..PIECES.len(), 0..8)
            .prop_map(|ix| ix.into_iter().map(|i| PIECES[i]).collect::<String>());
        let turn = (0..3u8, content, proptest::option::of(0..2u8)).prop_map(|(r, c, w)| {
            let role = [Role::System, Role::User, Role::Assistant][r as usize];
            let mut t = Turn::new(role, c);
            if role == Role::Assistant {
                t.weight = w;
            }
            t
        });
        proptest::collection::vec(turn, 0..6).prop_map(Record::chat)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1500, ..proptest::prelude::ProptestConfig::default() })]
        #[test]
        fn the_fast_paths_render_exactly_what_minijinja_and_hf_give(rec in conversation(), train_on_inputs in proptest::bool::ANY, smol in proptest::bool::ANY) {
            thread_local! {
                static R: [(Renderer, Renderer); 2] = [CHATML, SMOL].map(|t| {
                    let r = merged_renderer(t);
                    (r.clone(), r.without_fast_paths())
                });
            }
            let opts = RenderOptions { train_on_inputs };
            R.with(|rs| {
                let (fast, slow) = &rs[usize::from(smol)];
                for r in [fast, slow] {
                    match (r.render(&rec, &opts), r.count(&rec, &opts)) {
                        (Ok(a), Ok(n)) => assert_eq!((a.len(), a.target_tokens()), n),
                        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                        (a, b) => panic!("render {a:?} vs count {b:?}"),
                    }
                }
                match (fast.render(&rec, &opts), slow.render(&rec, &opts)) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => panic!("fast {a:?} vs slow {b:?}"),
                }
            });
        }
    }

    #[test]
    fn loss_covers_each_assistant_answer_through_its_eos_only() {
        let r = renderer(CHATML, "<|im_end|>");
        let out = r.render(&convo(), &RenderOptions::default()).expect("render");
        assert_eq!(out.input_ids.len(), out.labels.len());
        assert_eq!(loss_text(&r, &out), "_a1<|im_end|>_a2<|im_end|>_");
        // ChatML already ends the turn with EOS: nothing is inserted.
        assert_eq!(r.tokenizer().encode(&out.text, false).expect("encode"), out.input_ids);
        assert_eq!(out.labels.iter().filter(|&&l| l == 2).count(), 2);
    }

    #[test]
    fn weight_zero_turns_are_masked_and_train_on_inputs_unmasks_the_rest() {
        let r = renderer(CHATML, "<|im_end|>");
        let mut rec = convo();
        if let Body::Chat(t) = &mut rec.body {
            t[2].weight = Some(0);
        }
        let out = r.render(&rec, &RenderOptions::default()).expect("render");
        assert_eq!(loss_text(&r, &out), "_a2<|im_end|>_");
        let all = r.render(&rec, &RenderOptions { train_on_inputs: true }).expect("render");
        let text = loss_text(&r, &all);
        assert!(
            text.starts_with("<|im_start|>system") && text.contains("_") && text.ends_with("a2<|im_end|>\n"),
            "{text}"
        );
        assert!(!text.contains("a1"), "weight-0 turn must stay masked: {text}");
    }

    #[test]
    fn eos_is_inserted_after_turns_whose_template_has_none_even_when_pad_is_eos() {
        // A template that ends turns with a newline only; EOS must still close each target.
        let plain = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}";
        let r = renderer(plain, "<|im_end|>");
        let out = r.render(&convo(), &RenderOptions::default()).expect("render");
        assert_eq!(loss_text(&r, &out), "_a1\n<|im_end|>_a2\n<|im_end|>");
        let eos_positions: Vec<usize> =
            out.input_ids.iter().enumerate().filter(|(_, t)| **t == r.eos_id()).map(|(i, _)| i).collect();
        assert_eq!(eos_positions.len(), 2);
        assert!(eos_positions.iter().all(|&p| out.labels[p] == i64::from(r.eos_id())));
    }

    #[test]
    fn text_records_train_on_everything_and_end_with_eos() {
        let r = renderer(CHATML, "<|im_end|>");
        let rec = Record::new(Body::Text("abc".into()));
        let out = r.render(&rec, &RenderOptions::default()).expect("render");
        assert_eq!(
            r.count(&rec, &RenderOptions::default()).expect("count"),
            (out.len(), out.target_tokens())
        );
        assert_eq!(out.input_ids.last(), Some(&2));
        assert!(out.labels.iter().all(|&l| l != IGNORE_INDEX));
    }

    #[test]
    fn a_template_that_rewrites_earlier_turns_is_refused_naming_the_turn() {
        // SmolLM2's template adds a default system prompt, so a leading assistant turn cannot be
        // located by prefixes.
        let smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nDefault<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let r = renderer(smol, "<|im_end|>");
        let mut rec = Record::chat(vec![Turn::new(Role::Assistant, "a")]);
        rec.origin.line = 4;
        let err = r.render(&rec, &RenderOptions::default()).expect_err("must fail");
        assert!(err.to_string().contains(":4: `messages[0]`"), "{err}");
        // With a user turn first the same template works, default system prompt masked.
        let ok = r
            .render(
                &Record::chat(vec![Turn::new(Role::User, "q"), Turn::new(Role::Assistant, "a")]),
                &RenderOptions::default(),
            )
            .expect("render");
        assert_eq!(loss_text(&r, &ok), "_a<|im_end|>_");
    }
}
