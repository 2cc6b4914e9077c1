//! Needles: a statement hidden in the haystack, the question that asks for it, and the words of
//! the answer (`real_needle`, which must appear in the statement).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Needle {
    pub needle: String,
    pub question: String,
    pub real_needle: String,
}

impl Needle {
    /// Byte range of `real_needle` inside `needle` (exact match first, then ignoring case).
    pub fn answer_range(&self) -> Option<std::ops::Range<usize>> {
        let find = |hay: &str, pat: &str| hay.find(pat).map(|s| s..s + pat.len());
        find(&self.needle, &self.real_needle).or_else(|| {
            // Lower-casing ASCII keeps byte offsets; non-ASCII case folding could shift them.
            if self.needle.is_ascii() && self.real_needle.is_ascii() {
                find(&self.needle.to_ascii_lowercase(), &self.real_needle.to_ascii_lowercase())
            } else {
                None
            }
        })
    }

    fn validate(&self) -> std::result::Result<(), String> {
        for (field, v) in [
            ("needle", &self.needle),
            ("question", &self.question),
            ("real_needle", &self.real_needle),
        ] {
            if v.trim().is_empty() {
                return Err(format!("`{field}` is empty"));
            }
        }
        if self.answer_range().is_none() {
            return Err(format!(
                "real_needle {:?} does not appear in the needle {:?}",
                self.real_needle, self.needle
            ));
        }
        Ok(())
    }
}

/// The built-in needles, written for headhunt: facts, instructions, numbers, names, places and
/// dates that nothing in the haystack (or a model's general knowledge) can answer.
pub fn builtin() -> Vec<Needle> {
    let n = |needle: &str, question: &str, real: &str| Needle {
        needle: needle.into(),
        question: question.into(),
        real_needle: real.into(),
    };
    vec![
        n(
            "The secret ingredient in Marta's award-winning soup is a spoonful of smoked paprika and a splash of apple cider.",
            "What is the secret ingredient in Marta's award-winning soup?",
            "a spoonful of smoked paprika and a splash of apple cider",
        ),
        n(
            "Before opening the east gate, the night guard must ring the brass bell three times and wait for the lantern signal.",
            "What must the night guard do before opening the east gate?",
            "ring the brass bell three times and wait for the lantern signal",
        ),
        n(
            "The access code for the observatory archive is 4721 9036.",
            "What is the access code for the observatory archive?",
            "4721 9036",
        ),
        n(
            "The lighthouse on Corran Point was designed by an engineer named Elspeth Varley.",
            "Who designed the lighthouse on Corran Point?",
            "Elspeth Varley",
        ),
        n(
            "The best place to watch the autumn migration is the reed marsh behind the old salt mill at dawn.",
            "What is the best place to watch the autumn migration?",
            "the reed marsh behind the old salt mill at dawn",
        ),
        n(
            "The giant pumpkin at this year's harvest fair weighed exactly 612 kilograms.",
            "How much did the giant pumpkin at this year's harvest fair weigh?",
            "612 kilograms",
        ),
        n(
            "The river ferry stops running on the first Monday of November, when the ice barriers go up.",
            "When does the river ferry stop running?",
            "the first Monday of November",
        ),
        n(
            "To reset the weather station, hold the blue button for ten seconds while the display flashes green.",
            "How do you reset the weather station?",
            "hold the blue button for ten seconds while the display flashes green",
        ),
    ]
}

/// Needles from a JSONL file, one `{needle, question, real_needle}` object per line.
pub fn load_jsonl(path: &Path) -> Result<Vec<Needle>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let needle: Needle = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: expected {{\"needle\", \"question\", \"real_needle\"}}",
                path.display(),
                i + 1
            )
        })?;
        if let Err(e) = needle.validate() {
            bail!("{}:{}: {e}", path.display(), i + 1);
        }
        out.push(needle);
    }
    if out.is_empty() {
        bail!("{}: no needles", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_needles_are_valid() {
        let all = builtin();
        assert!(all.len() >= 6);
        for n in &all {
            n.validate().unwrap();
        }
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("hh-needles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.jsonl");
        std::fs::write(
            &path,
            "{\"needle\": \"A is B.\", \"question\": \"What is A?\", \"real_needle\": \"B\"}\n{not json}\n",
        )
        .unwrap();
        let err = format!("{:#}", load_jsonl(&path).unwrap_err());
        assert!(err.contains("n.jsonl:2"), "{err}");
        std::fs::write(
            &path,
            "{\"needle\": \"A is B.\", \"question\": \"What is A?\", \"real_needle\": \"C\"}\n",
        )
        .unwrap();
        let err = format!("{:#}", load_jsonl(&path).unwrap_err());
        assert!(err.contains("does not appear"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }
}
