//! Needle-in-a-haystack prompts, assembled from token pieces so that the needle's positions are
//! known exactly:
//!
//! `<book>{haystack with the needle}</book>\nBased on the content of the book, Question: {q}\nAnswer:`
//!
//! sent as one user message through the model's chat template when it has one, otherwise as plain
//! text after the model's BOS. The haystack is tokenized once; the needle is tokenized on its own
//! (with a leading space) and spliced in at a sentence boundary near the requested depth.

use std::ops::Range;

use anyhow::{bail, Result};
use headhunt_engine::{ChatMessage, Tokenizer};

use super::needle::Needle;

/// The marker that stands for the context while the chat template is rendered.
const CONTEXT_MARK: &str = "\u{E000}HEADHUNT-CONTEXT\u{E000}";

#[derive(Debug, Clone)]
pub struct NiahPrompt {
    pub ids: Vec<u32>,
    /// Positions of the needle statement.
    pub needle: Range<usize>,
    /// Positions of the answer words (`real_needle`): the span retrieval scores count.
    pub answer: Range<usize>,
    /// Tokens between `<book>` and `</book>`.
    pub context_tokens: usize,
    /// Their positions.
    pub context: Range<usize>,
    /// Where the needle landed, as a share of the haystack (0 to 100).
    pub actual_depth: f64,
}

/// The prompt text around the context, tokenized once per question.
pub struct Frame {
    before: Vec<u32>,
    after: Vec<u32>,
}

impl Frame {
    /// The paper's NIAH prompt around a book.
    pub fn new(tok: &Tokenizer, question: &str, chat: bool) -> Result<Self> {
        let after = format!("</book>\nBased on the content of the book, Question: {question}\nAnswer:");
        Frame::around(tok, "<book>", &after, "", chat)
    }

    /// A user message `before {context} after`, and `answer_prefix` as the start of the
    /// model's answer (after the chat template's assistant turn, or after the message in a
    /// plain prompt).
    pub fn around(tok: &Tokenizer, before: &str, after: &str, answer_prefix: &str, chat: bool) -> Result<Self> {
        let content = format!("{before}{CONTEXT_MARK}{after}");
        let use_chat = chat && tok.chat_template.is_some();
        let rendered = if use_chat {
            tok.render_chat(&[ChatMessage::user(content)])? + answer_prefix
        } else {
            content + answer_prefix
        };
        let Some((before, after)) = rendered.split_once(CONTEXT_MARK) else {
            bail!("the chat template dropped the message content");
        };
        // Plain prompts get the model's BOS; a chat template writes its own special tokens.
        Ok(Frame {
            before: tok.encode(before, !use_chat)?,
            after: tok.encode(after, false)?,
        })
    }

    /// The context's first position in the prompt.
    pub fn context_start(&self) -> usize {
        self.before.len()
    }

    /// Tokens before and after the context.
    pub fn overhead(&self) -> usize {
        self.before.len() + self.after.len()
    }

    /// The whole prompt around the given context tokens.
    pub fn wrap(&self, context: &[u32]) -> Vec<u32> {
        [&self.before[..], context, &self.after[..]].concat()
    }
}

/// A needle tokenized on its own, with the span of its answer words.
pub struct NeedleTokens {
    pub ids: Vec<u32>,
    pub answer: Range<usize>,
}

impl NeedleTokens {
    pub fn new(tok: &Tokenizer, needle: &Needle) -> Result<Self> {
        let text = format!(" {}", needle.needle);
        let Some(range) = needle.answer_range() else {
            bail!("real_needle {:?} does not appear in the needle", needle.real_needle);
        };
        let (lo, hi) = (range.start + 1, range.end + 1);
        let (ids, offsets) = tok.encode_with_offsets(&text, false)?;
        let Some(answer) = tokens_covering(&offsets, &(lo..hi)) else {
            bail!("the tokens of real_needle {:?} cannot be found in the needle", needle.real_needle);
        };
        Ok(NeedleTokens { ids, answer })
    }
}

/// The tokens (by their byte `offsets` in the text) that overlap the byte range `span`, as a
/// range of token indices; None when no token does.
pub fn tokens_covering(offsets: &[(usize, usize)], span: &Range<usize>) -> Option<Range<usize>> {
    let first = offsets.iter().position(|o| o.0 < span.end && o.1 > span.start)?;
    let last = offsets.iter().rposition(|o| o.0 < span.end && o.1 > span.start)?;
    Some(first..last + 1)
}

/// Whether a token ends a sentence (its text, trailing whitespace aside, ends in . ! or ?).
pub fn sentence_ends(tok: &Tokenizer, haystack: &[u32]) -> Vec<bool> {
    let mut cache = std::collections::HashMap::new();
    haystack
        .iter()
        .map(|&t| {
            *cache.entry(t).or_insert_with(|| {
                tok.decode(&[t], false)
                    .map(|s| s.trim_end().ends_with(['.', '!', '?']))
                    .unwrap_or(false)
            })
        })
        .collect()
}

/// Assemble one prompt: `length` context tokens (haystack plus needle), the needle at `depth`
/// percent, moved back to the nearest sentence end.
pub fn assemble(frame: &Frame, haystack: &[u32], ends: &[bool], needle: &NeedleTokens, length: usize, depth: f64) -> Result<NiahPrompt> {
    if length <= needle.ids.len() {
        bail!("context length {length} cannot hold the needle ({} tokens)", needle.ids.len());
    }
    let hay_len = length - needle.ids.len();
    if haystack.len() < hay_len {
        bail!("the haystack has {} tokens, {hay_len} are needed", haystack.len());
    }
    let insert = if depth >= 100.0 {
        hay_len
    } else {
        let mut at = (hay_len as f64 * depth / 100.0) as usize;
        while at > 0 && !ends[at - 1] {
            at -= 1;
        }
        at
    };
    let start = frame.before.len() + insert;
    let mut ids = Vec::with_capacity(frame.overhead() + length);
    ids.extend_from_slice(&frame.before);
    ids.extend_from_slice(&haystack[..insert]);
    ids.extend_from_slice(&needle.ids);
    ids.extend_from_slice(&haystack[insert..hay_len]);
    ids.extend_from_slice(&frame.after);
    Ok(NiahPrompt {
        ids,
        needle: start..start + needle.ids.len(),
        answer: start + needle.answer.start..start + needle.answer.end,
        context_tokens: length,
        context: frame.before.len()..frame.before.len() + length,
        actual_depth: 100.0 * insert as f64 / hay_len as f64,
    })
}
