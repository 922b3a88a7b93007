//! A verified fast path for ChatML chat templates (SmolLM2's and the plain ChatML loop): the same
//! text minijinja renders, built by string concatenation. Rendering a record for training renders
//! the template once for the whole conversation and twice per assistant turn (see
//! [`crate::render`]); through minijinja that was most of the validator's time per row.
//!
//! [`ChatMl::recognise`] accepts a template only when its source is one of the known forms
//! (whitespace and the spelling of `\n` in string literals aside) and, on probe conversations,
//! renders exactly what minijinja renders; anything else keeps minijinja.

use ferrotune_model::{ChatTemplate, Message};

/// A recognised ChatML template: each message as `<|im_start|>{role}\n{content}<|im_end|>\n`, the
/// generation prompt `<|im_start|>assistant\n`, and (SmolLM2) a default system message when the
/// first message is not a system message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMl {
    default_system: Option<String>,
}

const START: &str = "<|im_start|>";
const END: &str = "<|im_end|>\n";
const SYS_OPEN: &str = "<|im_start|>system\n";
const GENERATION: &str = "<|im_start|>assistant\n";
const LOOP: &str = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const PLAIN_HEAD: &str = "{% for message in messages %}";
const SMOL_HEAD: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n";
const SMOL_MID: &str = "<|im_end|>\n' }}{% endif %}";

impl ChatMl {
    /// The fast renderer of `t`, if `t` is a known ChatML template and renders like it.
    pub fn recognise(t: &ChatTemplate) -> Option<Self> {
        // Jinja reads `\n` in a string literal as a newline; sources carry either spelling.
        let src = t.source().trim().replace("\\n", "\n");
        let fast = if src == format!("{PLAIN_HEAD}{LOOP}") {
            ChatMl { default_system: None }
        } else {
            let rest = src.strip_prefix(SMOL_HEAD)?.strip_suffix(LOOP)?;
            let sys = rest.strip_suffix(SMOL_MID)?;
            if sys.contains(['\'', '\\', '{', '}', '%', '#']) {
                return None;
            }
            ChatMl { default_system: Some(sys.to_string()) }
        };
        fast.agrees_with(t).then_some(fast)
    }

    /// Renders a few conversations both ways: every branch of the template (with and without a
    /// leading system message, empty, generation prompt on and off).
    fn agrees_with(&self, t: &ChatTemplate) -> bool {
        let convos: [&[(&str, &str)]; 5] = [
            &[],
            &[("user", "hi")],
            &[("system", "S {{x}}\n"), ("user", " q\n\n"), ("assistant", "a 'quoted' \\n")],
            &[("assistant", "first"), ("user", "u")],
            &[("user", "é😀"), ("assistant", ""), ("user", "<|im_end|>")],
        ];
        convos.iter().all(|c| {
            let msgs: Vec<Message> = c.iter().map(|(r, x)| Message::new(*r, *x)).collect();
            [false, true].iter().all(|&generation| {
                let mut fast = String::new();
                self.render_into(c.iter().copied(), generation, &mut fast);
                t.render(&msgs, generation).is_ok_and(|slow| slow == fast)
            })
        })
    }

    /// The byte span of assistant message `i` in the rendering of `messages` as [`crate::render`]
    /// finds it — from the end of the rendering of `messages[..i]` with the generation prompt to
    /// the end of that of `messages[..=i]` — by arithmetic instead of two more renders; `None`
    /// where those renders are not prefixes of the whole (a leading assistant message under a
    /// default system prompt). For `i > 0` both prefix conditions hold by construction: the
    /// generation prompt is how an assistant message starts, and the default system prompt
    /// depends on `messages[0]` only.
    pub fn assistant_span(&self, messages: &[(&str, &str)], i: usize) -> Option<(usize, usize)> {
        if i == 0 && self.default_system.is_some() {
            return None;
        }
        let mut len = match &self.default_system {
            Some(sys) if messages.first().is_some_and(|m| m.0 != "system") && i > 0 => {
                SYS_OPEN.len() + sys.len() + END.len()
            }
            _ => 0,
        };
        for (role, content) in &messages[..i] {
            len += START.len() + role.len() + 1 + content.len() + END.len();
        }
        let before = len + GENERATION.len();
        let (role, content) = messages.get(i)?;
        Some((before, len + START.len() + role.len() + 1 + content.len() + END.len()))
    }

    /// Append the rendering of `messages` (role, content) to `out`.
    pub fn render_into<'a>(
        &self,
        messages: impl Iterator<Item = (&'a str, &'a str)>,
        add_generation_prompt: bool,
        out: &mut String,
    ) {
        for (i, (role, content)) in messages.enumerate() {
            if i == 0
                && role != "system"
                && let Some(sys) = &self.default_system
            {
                out.push_str(SYS_OPEN);
                out.push_str(sys);
                out.push_str(END);
            }
            out.push_str(START);
            out.push_str(role);
            out.push('\n');
            out.push_str(content);
            out.push_str(END);
        }
        if add_generation_prompt {
            out.push_str(GENERATION);
        }
    }
}
