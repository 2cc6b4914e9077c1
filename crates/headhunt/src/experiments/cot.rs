//! A chain-of-thought task whose every step must read the context back: multi-hop look-ups.
//!
//! Each problem lists a few facts about where things are ("Tom's coin is in the white bag.",
//! "The white bag is in the cellar.") for several owners, shuffled, and asks where one owner's
//! thing is. Answering takes `hops` look-ups, each one a fact of the context. Asked for its
//! steps, the model should restate the chain's facts and then give the room; asked directly,
//! only the room. Problems are generated from word lists with a seed, so no model has seen them
//! and every answer is known exactly.

use serde::{Deserialize, Serialize};

use crate::experiments::retrieval::niah::haystack::Rng;

const OWNERS: &[&str] = &[
    "Tom", "Lena", "Omar", "Priya", "Jonas", "Mei", "Carlos", "Ines", "Hugo", "Anya", "Felix", "Nora", "Ravi", "Greta", "Sami", "Elsa",
    "Marco", "Yuki", "Dara", "Leon",
];
const THINGS: &[&str] = &[
    "coin", "ring", "key", "watch", "letter", "map", "ticket", "badge", "compass", "medal", "whistle", "notebook", "locket", "pen", "stamp",
];
const COLOURS: &[&str] = &["red", "blue", "green", "white", "black", "yellow", "grey", "brown"];
const CONTAINERS: &[&str] = &["box", "tin", "jar", "bag", "basket", "envelope"];
const FURNITURE: &[&str] = &[
    "wardrobe",
    "cupboard",
    "dresser",
    "bookcase",
    "desk",
    "cabinet",
    "chest",
    "sideboard",
    "locker",
    "trunk",
];
/// Single words, so that an answer names a room or not without ambiguity.
pub const ROOMS: &[&str] = &[
    "kitchen",
    "cellar",
    "attic",
    "garage",
    "pantry",
    "study",
    "library",
    "bathroom",
    "hallway",
    "workshop",
    "bedroom",
    "greenhouse",
    "nursery",
    "porch",
    "ballroom",
];

/// How the prompt asks for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Style {
    /// Write the facts used, one look-up after the other, then the answer.
    Steps,
    /// Give the room only.
    Direct,
}

impl Style {
    pub fn name(self) -> &'static str {
        match self {
            Style::Steps => "steps",
            Style::Direct => "direct",
        }
    }
}

/// One look-up problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// The facts in the order the prompt lists them.
    pub facts: Vec<String>,
    pub question: String,
    /// The asked owner's chain of places, innermost first; the last is the room (the answer).
    pub chain: Vec<String>,
    /// Every place the facts name that is not on the asked chain.
    pub distractors: Vec<String>,
}

impl Problem {
    pub fn answer(&self) -> &str {
        self.chain.last().map_or("", String::as_str)
    }

    /// The facts of the asked chain, in the order the look-ups use them: a model's steps.
    pub fn steps(&self, owner_thing: &str) -> String {
        let mut out = Vec::new();
        let mut from = owner_thing.to_owned();
        for place in &self.chain {
            out.push(format!("{} is in the {place}.", capitalise(&from)));
            from = format!("the {place}");
        }
        out.join(" ")
    }

    /// The owner and thing asked about ("Tom's coin").
    pub fn subject(&self) -> &str {
        self.question
            .strip_prefix("In which room is ")
            .and_then(|q| q.strip_suffix('?'))
            .unwrap_or("")
    }

    /// The line a solved problem ends with, in a style (a demonstration's answer).
    pub fn solution(&self, style: Style) -> String {
        match style {
            Style::Steps => format!("{} Answer: {}", self.steps(self.subject()), self.answer()),
            Style::Direct => format!("Answer: {}", self.answer()),
        }
    }

    fn block(&self) -> String {
        format!("Facts: {}\nQuestion: {}\n", self.facts.join(" "), self.question)
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |f| f.to_uppercase().collect::<String>() + c.as_str())
}

/// Draw `n` distinct items of `pool` (a partial Fisher-Yates shuffle).
fn draw<'a>(rng: &mut Rng, pool: &[&'a str], n: usize) -> Vec<&'a str> {
    let mut v = pool.to_vec();
    for i in 0..n.min(v.len()) {
        let j = i + rng.below(v.len() - i);
        v.swap(i, j);
    }
    v.truncate(n);
    v
}

/// How the problems are drawn: look-ups per answer (2 or 3), owners' chains listed, and whether
/// the facts of all chains are shuffled together (harder) or listed chain by chain, each in
/// look-up order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub hops: usize,
    pub chains: usize,
    pub shuffled: bool,
}

/// `n` problems of a shape, from `seed`.
pub fn problems(n: usize, shape: Shape, seed: u64) -> Vec<Problem> {
    assert!((2..=3).contains(&shape.hops), "hops is 2 or 3");
    let mut rng = Rng(seed ^ 0xC07_C07);
    (0..n).map(|_| problem(&mut rng, shape)).collect()
}

fn problem(rng: &mut Rng, Shape { hops, chains, shuffled }: Shape) -> Problem {
    let owners = draw(rng, OWNERS, chains);
    let things = draw(rng, THINGS, chains);
    let colours = draw(rng, COLOURS, chains);
    let containers = draw(rng, CONTAINERS, chains);
    let furniture = draw(rng, FURNITURE, chains);
    let rooms = draw(rng, ROOMS, chains);
    let mut facts: Vec<Vec<String>> = Vec::new();
    let mut places: Vec<Vec<String>> = Vec::new();
    for c in 0..chains {
        let mut links = Vec::new();
        let mut chain = vec![format!("{} {}", colours[c], containers[c])];
        if hops == 3 {
            chain.push(furniture[c].to_owned());
        }
        chain.push(rooms[c].to_owned());
        let mut from = format!("{}'s {}", owners[c], things[c]);
        for place in &chain {
            links.push(format!("{} is in the {place}.", capitalise(&from)));
            from = format!("the {place}");
        }
        facts.push(links);
        places.push(chain);
    }
    // The chains in a random order; with `shuffled`, every fact in a random order.
    shuffle(rng, &mut facts);
    let mut facts: Vec<String> = facts.concat();
    if shuffled {
        shuffle(rng, &mut facts);
    }
    let asked = rng.below(chains);
    Problem {
        facts,
        question: format!("In which room is {}'s {}?", owners[asked], things[asked]),
        chain: places[asked].clone(),
        distractors: places
            .iter()
            .enumerate()
            .filter(|&(c, _)| c != asked)
            .flat_map(|(_, p)| p.iter().cloned())
            .collect(),
    }
}

fn shuffle<T>(rng: &mut Rng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
}

/// The prompt: an instruction, solved demonstrations (`demos`) in the style, then the problem.
pub fn prompt(problem: &Problem, demos: &[Problem], style: Style) -> String {
    let instruction = match style {
        Style::Steps => "Read the facts, then answer the question. Write each fact you use, then the answer.",
        Style::Direct => "Read the facts, then answer the question with the room only.",
    };
    let mut out = format!("{instruction}\n\n");
    for demo in demos {
        out.push_str(&format!("{}{}\n\n", demo.block(), demo.solution(style)));
    }
    out + &problem.block()
}

/// Lower-case words (letters and digits).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn mentions(words: &[String], name: &str) -> bool {
    let name = self::words(name);
    !name.is_empty() && words.windows(name.len()).any(|w| w == name.as_slice())
}

/// The generated text split at its last "Answer:" (case-insensitive): (steps, answer). Without
/// the marker, all of it is the answer and there are no steps.
pub fn split_answer(text: &str) -> (&str, &str) {
    let marker = "answer:";
    let at = text
        .char_indices()
        .map(|(i, _)| i)
        .rfind(|&i| text.get(i..i + marker.len()).is_some_and(|s| s.eq_ignore_ascii_case(marker)));
    match at {
        Some(i) => (&text[..i], &text[i + marker.len()..]),
        None => ("", text),
    }
}

/// Whether the final answer names the right room and no other: "Answer: the cellar, I think"
/// is right, "Answer: cellar or attic" and "Answer: attic" are not.
pub fn is_correct(text: &str, problem: &Problem) -> bool {
    let (_, answer) = split_answer(text);
    let w = words(answer);
    mentions(&w, problem.answer()) && !ROOMS.iter().any(|r| *r != problem.answer() && mentions(&w, r))
}

/// Whether the written steps restate the asked chain's facts: every place on the chain is named
/// before the answer, in the chain's order, and no place of another owner's chain is.
pub fn restates_facts(text: &str, problem: &Problem) -> bool {
    let (steps, _) = split_answer(text);
    let w = words(steps);
    let first_at = |name: &str| {
        let n = words(name);
        w.windows(n.len().max(1)).position(|x| x == n.as_slice())
    };
    let at: Option<Vec<usize>> = problem.chain.iter().map(|p| first_at(p)).collect();
    at.is_some_and(|at| at.windows(2).all(|p| p[0] < p[1])) && !problem.distractors.iter().any(|d| mentions(&w, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tom() -> Problem {
        Problem {
            facts: vec![
                "The white bag is in the cellar.".into(),
                "Lena's ring is in the red box.".into(),
                "Tom's coin is in the white bag.".into(),
                "The red box is in the attic.".into(),
            ],
            question: "In which room is Tom's coin?".into(),
            chain: vec!["white bag".into(), "cellar".into()],
            distractors: vec!["red box".into(), "attic".into()],
        }
    }

    #[test]
    fn the_checker_takes_the_room_with_extra_words_and_nothing_else() {
        let p = tom();
        for right in [
            "Answer: cellar",
            "Tom's coin is in the white bag. The white bag is in the cellar. Answer: cellar",
            "Answer: It is in the Cellar, I think.",
            "cellar",
            "The coin is in the cellar.",
            "answer: the cellar.",
        ] {
            assert!(is_correct(right, &p), "{right}");
        }
        for wrong in [
            "Answer: attic",
            "Answer: cellar or attic",
            "Tom's coin is in the cellar. Answer: white bag",
            "Answer:",
            "",
            "Answer: cellars",
            "The cellar. Answer: the attic",
        ] {
            assert!(!is_correct(wrong, &p), "{wrong}");
        }
    }

    #[test]
    fn steps_restate_the_chain_in_order_and_no_other_fact() {
        let p = tom();
        assert!(restates_facts(&p.solution(Style::Steps), &p));
        assert!(restates_facts(
            "The coin is in the White Bag, which is in the cellar. Answer: cellar",
            &p
        ));
        // A link missing, the order reversed, another chain's place, or no steps at all.
        assert!(!restates_facts("Tom's coin is in the cellar. Answer: cellar", &p));
        assert!(!restates_facts("The cellar holds the white bag. Answer: cellar", &p));
        assert!(!restates_facts(
            "Tom's coin is in the white bag. The red box is in the cellar. Answer: cellar",
            &p
        ));
        assert!(!restates_facts("Answer: cellar", &p));
    }

    #[test]
    fn generated_problems_are_consistent() {
        for (hops, shuffled) in [(2, false), (2, true), (3, true)] {
            let shape = Shape { hops, chains: 3, shuffled };
            let ps = problems(50, shape, 7);
            assert_eq!(ps, problems(50, shape, 7), "deterministic");
            for p in &ps {
                assert_eq!(p.facts.len(), 3 * hops);
                assert_eq!(p.chain.len(), hops);
                assert_eq!(p.distractors.len(), 2 * hops);
                assert!(ROOMS.contains(&p.answer()));
                // The solution's steps are facts of the problem, and it checks as right.
                for step in p.steps(p.subject()).split_inclusive('.') {
                    let step = step.trim();
                    assert!(p.facts.iter().any(|f| f == step), "{step} not in {:?}", p.facts);
                }
                assert!(is_correct(&p.solution(Style::Steps), p) && restates_facts(&p.solution(Style::Steps), p));
                assert!(is_correct(&p.solution(Style::Direct), p));
            }
        }
    }
}
