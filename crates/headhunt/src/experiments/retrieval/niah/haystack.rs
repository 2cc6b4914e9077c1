//! Haystacks: long, needle-free text to hide needles in.
//!
//! The built-in one is a deterministic prose generator (seeded): sentences of twenty shapes about
//! a fictional valley, filled from word lists, grouped in paragraphs, and never repeated within
//! one haystack. The user's own text (a file, or a folder of `.txt` files) is repeated to length.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Haystack {
    Generated { seed: u64 },
    Files(Vec<PathBuf>),
}

impl Haystack {
    /// A text file, or every text file of a folder in name order (files that are not UTF-8
    /// text, and links, which would repeat a file, are passed over).
    pub fn from_path(path: &Path) -> Result<Self> {
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .filter(|p| std::fs::read(p).is_ok_and(|b| std::str::from_utf8(&b).is_ok_and(|t| !t.trim().is_empty())))
                .collect();
            files.sort();
            files
        } else if path.is_file() {
            vec![path.to_owned()]
        } else {
            bail!("haystack {} does not exist", path.display());
        };
        if files.is_empty() {
            bail!("haystack folder {} holds no text files", path.display());
        }
        Ok(Haystack::Files(files))
    }

    /// Short description for records and reports.
    pub fn describe(&self) -> String {
        match self {
            Haystack::Generated { seed } => format!("generated prose (seed {seed})"),
            Haystack::Files(f) if f.len() == 1 => f[0].display().to_string(),
            Haystack::Files(f) => format!("{} files from {}", f.len(), f[0].parent().unwrap_or(Path::new(".")).display()),
        }
    }

    /// The haystack a [`Haystack::describe`] line names (paths as the run saw them).
    pub fn from_description(d: &str) -> Result<Self> {
        if let Some(seed) = d.strip_prefix("generated prose (seed ").and_then(|r| r.strip_suffix(')')) {
            return Ok(Haystack::Generated {
                seed: seed.parse().with_context(|| format!("bad haystack seed in `{d}`"))?,
            });
        }
        let folder = d.split_once(" files from ").filter(|(n, _)| n.parse::<usize>().is_ok());
        Haystack::from_path(Path::new(folder.map_or(d, |(_, dir)| dir)))
    }

    /// At least `min_chars` characters of haystack text.
    pub fn text(&self, min_chars: usize) -> Result<String> {
        match self {
            Haystack::Generated { seed } => Ok(Prose::new(*seed).take_chars(min_chars)),
            Haystack::Files(files) => {
                let mut parts = Vec::new();
                for f in files {
                    let t = std::fs::read_to_string(f).with_context(|| format!("reading haystack {}", f.display()))?;
                    let t = t.trim();
                    if !t.is_empty() {
                        parts.push(t.to_owned());
                    }
                }
                let one = parts.join("\n\n");
                if one.is_empty() {
                    bail!("the haystack files are empty");
                }
                let mut text = one.clone();
                while text.len() < min_chars {
                    text.push_str("\n\n");
                    text.push_str(&one);
                }
                Ok(text)
            }
        }
    }
}

/// SplitMix64: small, fast, and the same on every platform (every seeded draw in headhunt).
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len())]
    }
}

const PEOPLE: &[&str] = &[
    "the miller",
    "a shepherd named Tobin",
    "the schoolteacher",
    "old Ada Hale",
    "the blacksmith's daughter",
    "a travelling tinker",
    "the parish clerk",
    "two young surveyors",
    "the stationmaster",
    "a retired sea captain",
    "the baker on Orchard Lane",
    "a visiting botanist",
    "the innkeeper",
    "the carpenter's apprentice",
    "a pair of weavers",
    "the village doctor",
    "a mapmaker from the coast",
    "the beekeeper",
    "the toll keeper",
    "a group of students",
    "the widow Ashcombe",
    "a quiet man called Pell",
    "the dairy manager",
    "the organist",
    "a cousin of the mayor",
    "the potter",
    "two brothers from Lowfold",
    "the postmistress",
    "a wandering fiddler",
    "the land agent",
];

const PLACES: &[&str] = &[
    "the upper meadow",
    "the stone bridge",
    "the market square",
    "the chapel yard",
    "the northern ridge",
    "the orchard behind the inn",
    "the quarry road",
    "the willow bank",
    "the old granary",
    "the railway cutting",
    "the copper works",
    "the long field",
    "the hollow by the spring",
    "the hill fort",
    "Tannery Lane",
    "the sheep pens at Crale",
    "the footpath to Amblewick",
    "the flooded pit",
    "the brickyard",
    "the beech wood",
    "the weir below the village",
    "Saddler's Row",
    "the east pasture",
    "the ruined kiln",
    "the schoolhouse",
    "the crossroads at Fenny Down",
    "the rectory garden",
    "the reservoir",
];

const TIMES: &[&str] = &[
    "in the early spring",
    "after the long rains",
    "on a cold morning in January",
    "at the end of the wool season",
    "late one evening",
    "before the first frost",
    "in the dry years",
    "around midsummer",
    "on market days",
    "during the great snow",
    "one Sunday in April",
    "at first light",
    "in the week before Easter",
    "when the hay was still green",
    "some forty years ago",
    "every other Tuesday",
];

const OBJECTS: &[&str] = &[
    "a cart of slate",
    "bundles of reeds",
    "a crate of green apples",
    "a ledger of accounts",
    "a brass compass",
    "a bolt of blue linen",
    "a sack of barley",
    "a clay jug",
    "an iron kettle",
    "a box of seed potatoes",
    "a coil of rope",
    "a painted sign",
    "a barrow of turnips",
    "a roll of wire",
    "two wooden chairs",
    "a basket of eggs",
    "a broken clock",
    "a set of chisels",
    "a stack of roof tiles",
    "a tin of nails",
];

const VERBS: &[&str] = &[
    "carried",
    "repaired",
    "counted",
    "sold",
    "painted",
    "measured",
    "buried",
    "mended",
    "collected",
    "traded",
    "weighed",
    "loaded",
    "hid",
    "delivered",
    "inspected",
    "lost",
];

const ADJECTIVES: &[&str] = &[
    "narrow",
    "crooked",
    "whitewashed",
    "mossy",
    "steep",
    "quiet",
    "busy",
    "weathered",
    "draughty",
    "low",
    "handsome",
    "sagging",
    "tidy",
    "ancient",
    "cheerful",
    "gloomy",
];

const ANIMALS: &[&str] = &[
    "a heron",
    "a family of otters",
    "a lame pony",
    "a flock of starlings",
    "a white hare",
    "an old sheepdog",
    "a pair of buzzards",
    "a stray goat",
    "a badger",
    "a barn owl",
];

const ANIMAL_ACTIONS: &[&str] = &[
    "crossing the road",
    "hunting in the shallows",
    "sleeping in the sun",
    "circling over the rooftops",
    "digging under a hedge",
    "drinking from a trough",
    "watching the workmen",
];

const NATURE: &[&str] = &[
    "the wind from the hills",
    "a thin grey mist",
    "the river",
    "heavy snow",
    "the spring floods",
    "a hard frost",
    "summer hail",
];

const NATURE_VERBS: &[&str] = &["arrives", "lingers", "rises", "returns", "comes down", "turns"];

const REACTIONS: &[&str] = &[
    "move their animals to higher ground",
    "close their shutters and wait",
    "gather at the inn to swap stories",
    "check the drains twice a day",
    "light fires in every room",
    "send the children to their grandparents",
];

const STRUCTURES: &[&str] = &[
    "barn",
    "wall",
    "cottage",
    "footbridge",
    "chimney",
    "well",
    "dovecote",
    "stable",
    "workshop",
    "shelter",
];

const EVENTS: &[&str] = &[
    "the storm of the cold winter",
    "the fire at the tannery",
    "the opening of the railway",
    "the flood that took the old mill wheel",
    "the road was widened",
    "the estate was sold",
];

const TOPICS: &[&str] = &[
    "the boundary of the common land",
    "whether the stone bridge was Roman",
    "the proper way to stack a hay rick",
    "who owned the rights to the spring",
    "the correct spelling of the village name",
    "the best breed of sheep for the hills",
];

const CRAFTS: &[&str] = &[
    "basket weaving",
    "dry-stone walling",
    "wood turning",
    "lace making",
    "thatching",
    "pottery",
    "rope making",
];

const QUALITIES: &[&str] = &[
    "fine patterns",
    "odd colours",
    "great strength",
    "plain honesty",
    "careful finish",
    "unusual shapes",
];

const NUMBER_WORDS: &[&str] = &["two", "three", "four", "five", "six", "seven", "eight", "nine", "eleven", "twelve"];

const DIRECTIONS: &[&str] = &["the river", "the hills", "the road", "the church", "the woods", "the south"];

const ERAS: &[&str] = &[
    "in her grandmother's time",
    "before the enclosures",
    "when the mines were still open",
    "long before the war",
    "in the days of the stagecoach",
];

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The built-in prose generator.
pub struct Prose {
    rng: Rng,
    seen: HashSet<String>,
}

impl Prose {
    pub fn new(seed: u64) -> Self {
        Prose {
            rng: Rng(seed ^ 0x6A09_E667_F3BC_C908),
            seen: HashSet::new(),
        }
    }

    fn sentence(&mut self) -> String {
        let r = &mut self.rng;
        let shape = r.below(20);
        let year = 1780 + r.below(160);
        let count = 2 + r.below(40);
        let s = match shape {
            0 => format!(
                "{}, {} {} {} along {}.",
                r.pick(TIMES),
                r.pick(PEOPLE),
                r.pick(VERBS),
                r.pick(OBJECTS),
                r.pick(PLACES)
            ),
            1 => format!(
                "Nobody remembers exactly when {} was first used, but {} claims it was {}.",
                r.pick(PLACES),
                r.pick(PEOPLE),
                r.pick(ERAS)
            ),
            2 => format!(
                "{} kept {} hens in a {} shed near {}, and fed them before breakfast every day.",
                r.pick(PEOPLE),
                count,
                r.pick(ADJECTIVES),
                r.pick(PLACES)
            ),
            3 => format!(
                "The road to {} is {} and {}, and in wet weather it becomes almost impassable.",
                r.pick(PLACES),
                r.pick(ADJECTIVES),
                r.pick(ADJECTIVES)
            ),
            4 => format!(
                "According to {}, {} {} more often now than it did {}.",
                r.pick(PEOPLE),
                r.pick(NATURE),
                r.pick(NATURE_VERBS),
                r.pick(ERAS)
            ),
            5 => format!(
                "It took {} days to clear {}, and even then {} was not satisfied.",
                r.pick(NUMBER_WORDS),
                r.pick(PLACES),
                r.pick(PEOPLE)
            ),
            6 => format!(
                "There is a {} house near {} with {} windows facing {}.",
                r.pick(ADJECTIVES),
                r.pick(PLACES),
                r.pick(NUMBER_WORDS),
                r.pick(DIRECTIONS)
            ),
            7 => format!(
                "{} once said that the best timber in the valley came from {}.",
                r.pick(PEOPLE),
                r.pick(PLACES)
            ),
            8 => format!(
                "When {} {}, the families near {} {}.",
                r.pick(NATURE),
                r.pick(NATURE_VERBS),
                r.pick(PLACES),
                r.pick(REACTIONS)
            ),
            9 => format!(
                "{}, {} was seen {} near {}.",
                r.pick(TIMES),
                r.pick(ANIMALS),
                r.pick(ANIMAL_ACTIONS),
                r.pick(PLACES)
            ),
            10 => format!(
                "The parish accounts for {year} list {count} payments for {}, most of them to {}.",
                r.pick(OBJECTS),
                r.pick(PEOPLE)
            ),
            11 => format!(
                "Children from {} walked to {} every morning, a distance of about {} miles.",
                r.pick(PLACES),
                r.pick(PLACES),
                r.pick(NUMBER_WORDS)
            ),
            12 => format!(
                "{} and {} argued for years about {}.",
                r.pick(PEOPLE),
                r.pick(PEOPLE),
                r.pick(TOPICS)
            ),
            13 => format!(
                "A {} {} stood at the edge of {} until {}.",
                r.pick(ADJECTIVES),
                r.pick(STRUCTURES),
                r.pick(PLACES),
                r.pick(EVENTS)
            ),
            14 => format!(
                "In {year}, {} {} {} and left it at {}.",
                r.pick(PEOPLE),
                r.pick(VERBS),
                r.pick(OBJECTS),
                r.pick(PLACES)
            ),
            15 => format!(
                "Most visitors never notice the {} {} behind {}.",
                r.pick(ADJECTIVES),
                r.pick(STRUCTURES),
                r.pick(PLACES)
            ),
            16 => format!(
                "The {} of the valley was known for its {}, and {} still practises it.",
                r.pick(CRAFTS),
                r.pick(QUALITIES),
                r.pick(PEOPLE)
            ),
            17 => format!(
                "{}, the chapel bells rang {} times to mark {}.",
                r.pick(TIMES),
                r.pick(NUMBER_WORDS),
                r.pick(EVENTS)
            ),
            18 => format!(
                "Some say that {} is haunted, though {} has walked past it every night for {count} years.",
                r.pick(PLACES),
                r.pick(PEOPLE)
            ),
            _ => format!(
                "{} {} {} at {} and said nothing about it to anyone.",
                capitalize(r.pick(PEOPLE)),
                r.pick(VERBS),
                r.pick(OBJECTS),
                r.pick(PLACES)
            ),
        };
        capitalize(&s)
    }

    /// A sentence not used before in this haystack (after a few redraws, whatever comes).
    fn fresh_sentence(&mut self) -> String {
        for _ in 0..64 {
            let s = self.sentence();
            if self.seen.insert(s.clone()) {
                return s;
            }
        }
        self.sentence()
    }

    /// Paragraphs of three to seven sentences until at least `min_chars` characters.
    pub fn take_chars(&mut self, min_chars: usize) -> String {
        let mut text = String::with_capacity(min_chars + 1024);
        while text.len() < min_chars {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            let n = 3 + self.rng.below(5);
            let sentences: Vec<String> = (0..n).map(|_| self.fresh_sentence()).collect();
            text.push_str(&sentences.join(" "));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_prose_is_deterministic_and_does_not_repeat() {
        let a = Haystack::Generated { seed: 7 }.text(200_000).unwrap();
        let b = Haystack::Generated { seed: 7 }.text(200_000).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, Haystack::Generated { seed: 8 }.text(200_000).unwrap());
        // No sentence twice in ~30k words (longer than any context headhunt runs by default).
        let sentences: Vec<&str> = a.split_inclusive(['.']).map(str::trim).filter(|s| s.len() > 20).collect();
        let distinct: HashSet<&str> = sentences.iter().copied().collect();
        assert!(sentences.len() > 2000);
        assert_eq!(distinct.len(), sentences.len());
    }

    #[test]
    fn files_repeat_to_length() {
        let dir = std::env::temp_dir().join(format!("hh-hay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.txt"), "Second file.").unwrap();
        std::fs::write(dir.join("a.txt"), "First file.").unwrap();
        std::fs::write(dir.join("skip.bin"), [0xff, 0xfe, 0x00]).unwrap();
        let h = Haystack::from_path(&dir).unwrap();
        let t = h.text(60).unwrap();
        assert!(t.starts_with("First file.\n\nSecond file.\n\nFirst file."));
        assert!(!t.contains('\u{fffd}'));
        std::fs::remove_dir_all(&dir).ok();
        assert!(Haystack::from_path(Path::new("/nonexistent")).is_err());
    }
}
