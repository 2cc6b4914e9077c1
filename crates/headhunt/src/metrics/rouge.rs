//! ROUGE-1 as the `rouge-score` package computes it with `use_stemmer=True`: lower-cased
//! alphanumeric unigrams, words longer than three letters reduced by NLTK's Porter stemmer
//! (its default `NLTK_EXTENSIONS` mode), clipped unigram counts.

use std::collections::HashMap;

/// Unigrams of `text` as rouge-score tokenizes them.
pub fn tokenize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            word.push(c);
        } else if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens.into_iter().map(|t| if t.len() > 3 { porter_stem(&t) } else { t }).collect()
}

/// ROUGE-1 recall of `prediction` against `target`, in [0, 1]: the share of the target's
/// unigrams (with multiplicity) that the prediction contains.
pub fn rouge1_recall(target: &str, prediction: &str) -> f64 {
    let target = tokenize(target);
    if target.is_empty() {
        return 0.0;
    }
    let mut available: HashMap<String, usize> = HashMap::new();
    for t in tokenize(prediction) {
        *available.entry(t).or_default() += 1;
    }
    let mut hit = 0usize;
    for t in &target {
        if let Some(n) = available.get_mut(t) {
            if *n > 0 {
                *n -= 1;
                hit += 1;
            }
        }
    }
    hit as f64 / target.len() as f64
}

/// Porter's stemmer with NLTK's extensions, on a lower-case ASCII word.
pub fn porter_stem(word: &str) -> String {
    const IRREGULAR: [(&str, &str); 16] = [
        ("sky", "sky"),
        ("skies", "sky"),
        ("dying", "die"),
        ("lying", "lie"),
        ("tying", "tie"),
        ("news", "news"),
        ("innings", "inning"),
        ("inning", "inning"),
        ("outings", "outing"),
        ("outing", "outing"),
        ("cannings", "canning"),
        ("canning", "canning"),
        ("howe", "howe"),
        ("proceed", "proceed"),
        ("exceed", "exceed"),
        ("succeed", "succeed"),
    ];
    if let Some((_, s)) = IRREGULAR.iter().find(|(w, _)| *w == word) {
        return (*s).to_owned();
    }
    if word.chars().count() <= 2 {
        return word.to_owned();
    }
    let mut w: Vec<u8> = word.bytes().collect();
    step1a(&mut w);
    step1b(&mut w);
    step1c(&mut w);
    step2(&mut w);
    step3(&mut w);
    step4(&mut w);
    step5a(&mut w);
    step5b(&mut w);
    String::from_utf8(w).expect("ASCII in, ASCII out")
}

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// Consonant flags: `y` is a consonant at the start or after a vowel.
fn consonants(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = if is_vowel(c) {
            false
        } else if c == b'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(f);
    }
    flags
}

fn is_consonant(w: &[u8], i: usize) -> bool {
    consonants(&w[..=i])[i]
}

/// Porter's m: the number of vowel-consonant transitions.
fn measure(stem: &[u8]) -> usize {
    let f = consonants(stem);
    f.windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(stem: &[u8]) -> bool {
    consonants(stem).iter().any(|&c| !c)
}

fn ends_double_consonant(w: &[u8]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    (n >= 3 && is_consonant(w, n - 3) && !is_consonant(w, n - 2) && is_consonant(w, n - 1) && !matches!(w[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

/// A suffix rule: `suffix -> replacement` when `condition(stem)` holds. Rules are tried in
/// order; the first whose suffix matches decides (applies, or stops everything).
type Rule<'a> = (&'a str, &'a str, &'a dyn Fn(&[u8]) -> bool);

fn apply_rules(w: &mut Vec<u8>, rules: &[Rule<'_>]) {
    for &(suffix, replacement, condition) in rules {
        if w.ends_with(suffix.as_bytes()) {
            let stem_len = w.len() - suffix.len();
            if condition(&w[..stem_len]) {
                w.truncate(stem_len);
                w.extend_from_slice(replacement.as_bytes());
            }
            return;
        }
    }
}

fn positive(stem: &[u8]) -> bool {
    measure(stem) > 0
}

fn always(_: &[u8]) -> bool {
    true
}

fn step1a(w: &mut Vec<u8>) {
    if w.ends_with(b"ies") && w.len() == 4 {
        w.truncate(w.len() - 1);
        return;
    }
    apply_rules(
        w,
        &[
            ("sses", "ss", &always),
            ("ies", "i", &always),
            ("ss", "ss", &always),
            ("s", "", &always),
        ],
    );
}

fn step1b(w: &mut Vec<u8>) {
    if w.ends_with(b"ied") {
        let keep_e = w.len() == 4;
        w.truncate(w.len() - 3);
        w.extend_from_slice(if keep_e { b"ie" } else { b"i" });
        return;
    }
    if w.ends_with(b"eed") {
        if measure(&w[..w.len() - 3]) > 0 {
            w.truncate(w.len() - 1);
        }
        return;
    }
    let mut stripped = false;
    for suffix in [&b"ed"[..], b"ing"] {
        if w.ends_with(suffix) && contains_vowel(&w[..w.len() - suffix.len()]) {
            w.truncate(w.len() - suffix.len());
            stripped = true;
            break;
        }
    }
    if !stripped {
        return;
    }
    if w.ends_with(b"at") || w.ends_with(b"bl") || w.ends_with(b"iz") {
        w.push(b'e');
    } else if ends_double_consonant(w) {
        if !matches!(w[w.len() - 1], b'l' | b's' | b'z') {
            w.pop();
        }
    } else if measure(w) == 1 && ends_cvc(w) {
        w.push(b'e');
    }
}

fn step1c(w: &mut [u8]) {
    if w.ends_with(b"y") {
        let n = w.len();
        if n - 1 > 1 && is_consonant(w, n - 2) {
            w[n - 1] = b'i';
        }
    }
}

fn step2(w: &mut Vec<u8>) {
    if w.ends_with(b"alli") && positive(&w[..w.len() - 4]) {
        w.truncate(w.len() - 2);
        return step2(w);
    }
    let whole = w.clone();
    let logi = move |_: &[u8]| positive(&whole[..whole.len() - 3]);
    apply_rules(
        w,
        &[
            ("ational", "ate", &positive),
            ("tional", "tion", &positive),
            ("enci", "ence", &positive),
            ("anci", "ance", &positive),
            ("izer", "ize", &positive),
            ("bli", "ble", &positive),
            ("alli", "al", &positive),
            ("entli", "ent", &positive),
            ("eli", "e", &positive),
            ("ousli", "ous", &positive),
            ("ization", "ize", &positive),
            ("ation", "ate", &positive),
            ("ator", "ate", &positive),
            ("alism", "al", &positive),
            ("iveness", "ive", &positive),
            ("fulness", "ful", &positive),
            ("ousness", "ous", &positive),
            ("aliti", "al", &positive),
            ("iviti", "ive", &positive),
            ("biliti", "ble", &positive),
            ("fulli", "ful", &positive),
            ("logi", "log", &logi),
        ],
    );
}

fn step3(w: &mut Vec<u8>) {
    apply_rules(
        w,
        &[
            ("icate", "ic", &positive),
            ("ative", "", &positive),
            ("alize", "al", &positive),
            ("iciti", "ic", &positive),
            ("ical", "ic", &positive),
            ("ful", "", &positive),
            ("ness", "", &positive),
        ],
    );
}

fn step4(w: &mut Vec<u8>) {
    let gt1 = |s: &[u8]| measure(s) > 1;
    let ion = |s: &[u8]| measure(s) > 1 && matches!(s.last(), Some(b's' | b't'));
    apply_rules(
        w,
        &[
            ("al", "", &gt1),
            ("ance", "", &gt1),
            ("ence", "", &gt1),
            ("er", "", &gt1),
            ("ic", "", &gt1),
            ("able", "", &gt1),
            ("ible", "", &gt1),
            ("ant", "", &gt1),
            ("ement", "", &gt1),
            ("ment", "", &gt1),
            ("ent", "", &gt1),
            ("ion", "", &ion),
            ("ou", "", &gt1),
            ("ism", "", &gt1),
            ("ate", "", &gt1),
            ("iti", "", &gt1),
            ("ous", "", &gt1),
            ("ive", "", &gt1),
            ("ize", "", &gt1),
        ],
    );
}

fn step5a(w: &mut Vec<u8>) {
    if w.ends_with(b"e") {
        let stem = &w[..w.len() - 1];
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            w.pop();
        }
    }
}

fn step5b(w: &mut Vec<u8>) {
    if w.ends_with(b"ll") && measure(&w[..w.len() - 1]) > 1 {
        w.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porter_examples_from_the_paper() {
        for (word, stem) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("conflated", "conflat"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("enjoy", "enjoy"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("hopefulness", "hope"),
            ("controll", "control"),
            ("dying", "die"),
            ("flies", "fli"),
            ("died", "die"),
        ] {
            assert_eq!(porter_stem(word), stem, "{word}");
        }
    }

    #[test]
    fn recall_counts_clipped_unigrams() {
        assert_eq!(rouge1_recall("the cat sat", "The cat!"), 2.0 / 3.0);
        assert_eq!(rouge1_recall("cat cat", "cat"), 0.5);
        assert_eq!(rouge1_recall("Running dogs", "the dog runs"), 1.0);
        assert_eq!(rouge1_recall("", "anything"), 0.0);
        assert_eq!(rouge1_recall("café au lait", "caf au lait"), 1.0);
    }
}
