//! The words RULER's tasks are made of: `adjective-noun` keys (RULER draws them from the
//! `wonderwords` lists; these lists are headhunt's own), 7-digit numbers, version-4 UUIDs, the
//! words of the common-words list, and the coded words of the frequent-words task.

use crate::experiments::retrieval::niah::haystack::Rng;

const ADJECTIVES: &[&str] = &[
    "abundant",
    "agreeable",
    "amused",
    "ancient",
    "angry",
    "anxious",
    "bashful",
    "bitter",
    "blushing",
    "boiling",
    "brave",
    "breezy",
    "brief",
    "bright",
    "broad",
    "busy",
    "calm",
    "careful",
    "cheerful",
    "chilly",
    "clever",
    "cloudy",
    "clumsy",
    "colossal",
    "cool",
    "crooked",
    "crowded",
    "curious",
    "damp",
    "dapper",
    "dazzling",
    "delicate",
    "dizzy",
    "dusty",
    "eager",
    "early",
    "elegant",
    "empty",
    "fancy",
    "fierce",
    "flat",
    "fluffy",
    "foolish",
    "fragile",
    "frantic",
    "friendly",
    "gentle",
    "giant",
    "glamorous",
    "gleaming",
    "glossy",
    "grumpy",
    "handsome",
    "harsh",
    "heavy",
    "helpful",
    "hollow",
    "honest",
    "humble",
    "hungry",
    "icy",
    "itchy",
    "jolly",
    "juicy",
    "kind",
    "lazy",
    "little",
    "lively",
    "lonely",
    "loud",
    "lucky",
    "magnificent",
    "massive",
    "mellow",
    "misty",
    "modern",
    "muddy",
    "narrow",
    "nervous",
    "nimble",
    "noisy",
    "odd",
    "old",
    "orange",
    "pale",
    "patient",
    "plain",
    "polite",
    "proud",
    "puzzled",
    "quaint",
    "quick",
    "quiet",
    "rapid",
    "rare",
    "rough",
    "round",
    "rusty",
    "sad",
    "salty",
    "scary",
    "shaggy",
    "shallow",
    "sharp",
    "shiny",
    "silent",
    "silly",
    "sleepy",
    "slim",
    "slippery",
    "smooth",
    "soft",
    "sour",
    "sparkling",
    "spicy",
    "splendid",
    "steep",
    "sticky",
    "stormy",
    "strange",
    "striped",
    "sturdy",
    "sweet",
    "swift",
    "tame",
    "tender",
    "thirsty",
    "tidy",
    "tiny",
    "tough",
    "tricky",
    "ugly",
    "vast",
    "velvet",
    "wandering",
    "warm",
    "wary",
    "weary",
    "whispering",
    "wicked",
    "wide",
    "wild",
    "windy",
    "wise",
    "witty",
    "wooden",
    "wrinkled",
    "young",
    "zany",
];

const NOUNS: &[&str] = &[
    "acorn", "anchor", "apron", "arch", "attic", "badge", "bagel", "balcony", "banner", "barrel", "basket", "beacon", "bell", "bench",
    "blanket", "bottle", "bracelet", "bridge", "broom", "bucket", "bugle", "button", "cabin", "cactus", "candle", "canoe", "canyon",
    "carpet", "castle", "cellar", "chimney", "clock", "cloud", "compass", "cookie", "copper", "cottage", "crayon", "cricket", "crown",
    "cushion", "dagger", "daisy", "desk", "dolphin", "donkey", "drum", "eagle", "elbow", "engine", "falcon", "feather", "fence", "ferry",
    "fiddle", "flag", "flute", "forest", "fountain", "garden", "garlic", "giraffe", "glacier", "goblet", "gravel", "guitar", "hammer",
    "harbor", "harp", "helmet", "hinge", "honey", "island", "jacket", "jelly", "kettle", "kitten", "ladder", "lantern", "lemon", "lizard",
    "locket", "magnet", "mango", "marble", "meadow", "mirror", "mitten", "monkey", "mustard", "napkin", "needle", "notebook", "oyster",
    "paddle", "parrot", "pebble", "pencil", "pepper", "piano", "pillow", "pirate", "planet", "pocket", "pony", "pretzel", "pumpkin",
    "puzzle", "quilt", "rabbit", "raft", "ribbon", "river", "rocket", "saddle", "sailor", "satchel", "scarf", "shovel", "skillet", "sled",
    "spoon", "squirrel", "stable", "statue", "sweater", "table", "teapot", "thimble", "thistle", "throne", "tiger", "toaster", "tower",
    "trumpet", "tulip", "tunnel", "turtle", "umbrella", "valley", "violin", "wagon", "walrus", "wardrobe", "whistle", "window", "wizard",
    "yacht", "zebra",
];

const VERBS: &[&str] = &[
    "admire", "argue", "arrive", "bake", "balance", "bounce", "breathe", "build", "carry", "chase", "climb", "collect", "cough", "crawl",
    "dance", "deliver", "divide", "dream", "drift", "escape", "explain", "fasten", "float", "fold", "gather", "glow", "guard", "hover",
    "hurry", "imagine", "juggle", "kneel", "knit", "laugh", "launch", "listen", "march", "measure", "melt", "murmur", "obey", "paint",
    "paddle", "polish", "pour", "pretend", "question", "reach", "repair", "rescue", "scatter", "scribble", "shiver", "sketch", "sneeze",
    "sparkle", "spill", "splash", "stitch", "stretch", "stumble", "swing", "tickle", "travel", "tumble", "untie", "vanish", "wander",
    "whisper", "wobble", "wonder", "yawn",
];

/// A key of the `words` kind: `adjective-noun`.
pub(crate) fn key_word(rng: &mut Rng) -> String {
    format!("{}-{}", ADJECTIVES[rng.below(ADJECTIVES.len())], NOUNS[rng.below(NOUNS.len())])
}

/// A 7-digit number, as RULER's values.
pub(crate) fn number(rng: &mut Rng) -> String {
    (1_000_000 + rng.below(9_000_000)).to_string()
}

/// A random version-4 UUID in its canonical form (as Python's `uuid.UUID(int=..., version=4)`).
pub(crate) fn uuid(rng: &mut Rng) -> String {
    let mut v = (u128::from(rng.next()) << 64) | u128::from(rng.next());
    v &= !(0xF000u128 << 64) & !(0xC000u128 << 48);
    v |= (0x4000u128 << 64) | (0x8000u128 << 48);
    let h = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// `n` distinct words for the common-words list, in a seeded order: the English lists first,
/// then (past their ~400 words, above ~5,000 tokens of list) words made of two or three
/// syllables. RULER likewise falls back from its `wonderwords` lists to a larger vocabulary.
pub(crate) fn distinct_words(rng: &mut Rng, n: usize) -> Vec<String> {
    let mut english: Vec<&str> = NOUNS.iter().chain(ADJECTIVES).chain(VERBS).copied().collect();
    english.sort_unstable();
    english.dedup();
    shuffle(rng, &mut english);
    let mut out: Vec<String> = english.into_iter().take(n).map(str::to_owned).collect();
    let mut seen: std::collections::HashSet<String> = out.iter().cloned().collect();
    const ONSETS: &[&str] = &[
        "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "pl", "st", "tr",
    ];
    const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ou"];
    while out.len() < n {
        let syllables = 2 + rng.below(2);
        let word: String = (0..syllables)
            .map(|_| format!("{}{}", ONSETS[rng.below(ONSETS.len())], VOWELS[rng.below(VOWELS.len())]))
            .collect();
        if seen.insert(word.clone()) {
            out.push(word);
        }
    }
    out
}

/// A coded word of the frequent-words task: `len` random lower-case letters.
pub(crate) fn coded_word(rng: &mut Rng, len: usize) -> String {
    (0..len).map(|_| (b'a' + rng.below(26) as u8) as char).collect()
}

/// Fisher-Yates with the seeded generator.
pub(crate) fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_their_forms() {
        let mut rng = Rng(3);
        for _ in 0..200 {
            let n = number(&mut rng);
            assert_eq!(n.len(), 7, "{n}");
            let u = uuid(&mut rng);
            let parts: Vec<&str> = u.split('-').collect();
            assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{u}");
            assert!(parts[2].starts_with('4'), "{u}: version 4");
            assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'), "{u}: RFC 4122 variant");
            let k = key_word(&mut rng);
            assert_eq!(k.split('-').count(), 2, "{k}");
        }
    }

    #[test]
    fn distinct_words_are_distinct_past_the_english_lists() {
        let words = distinct_words(&mut Rng(1), 3000);
        let set: std::collections::HashSet<&String> = words.iter().collect();
        assert_eq!(set.len(), 3000);
        assert!(words[..300].iter().all(|w| w.chars().all(|c| c.is_ascii_lowercase())));
    }
}
