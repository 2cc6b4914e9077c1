use super::*;
use crate::experiments::retrieval::niah::haystack::Haystack;

fn sources() -> Sources {
    let essay = Haystack::Generated { seed: 1 }.text(60_000).unwrap();
    Sources::new(&essay, crate::experiments::qa::builtin()).unwrap()
}

fn trial(task: Task, depth: f64, seed: u64) -> Trial {
    Trial {
        task,
        length: 8192,
        depth,
        sample: seed as usize,
        seed,
    }
}

/// Every asked value is in the context exactly where the sample's spans say, once; no other
/// needle carries it.
#[test]
fn asked_values_are_in_the_context_where_the_spans_say() {
    let s = sources();
    for task in Task::ALL {
        for seed in 0..5 {
            let sample = s.sample(&trial(task, 50.0, seed), 400);
            assert!(!sample.outputs.is_empty(), "{task}");
            if !task.copies() {
                continue;
            }
            assert!(!sample.copy_spans.is_empty(), "{task} seed {seed}: no spans");
            for span in &sample.copy_spans {
                let text = &sample.context[span.clone()];
                assert!(
                    sample.outputs.iter().any(|o| o == text),
                    "{task}: span {text:?} is not an expected value"
                );
            }
            if task.name().starts_with("niah") {
                // Each asked value once, in one needle, and in no distractor.
                assert_eq!(sample.copy_spans.len(), sample.outputs.len(), "{task}");
                for o in &sample.outputs {
                    assert_eq!(sample.context.matches(o.as_str()).count(), 1, "{task}: {o} appears more than once");
                }
            }
        }
    }
}

#[test]
fn needles_and_distractors_have_rulers_counts() {
    let s = sources();
    let needles = |task| {
        let sample = s.sample(&trial(task, 50.0, 3), 300);
        (sample.context.matches("One of the special magic").count(), sample)
    };
    assert_eq!(needles(Task::NiahSingle1).0, 1);
    assert_eq!(needles(Task::NiahSingle2).0, 1);
    // Four keys, one asked: three distractor needles whose values are not the answer.
    let (n, mk) = needles(Task::NiahMultikey1);
    assert_eq!(n, 4);
    assert_eq!(mk.outputs.len(), 1);
    // A haystack made only of needles: 300 distractors and the real one.
    assert_eq!(needles(Task::NiahMultikey2).0, 301);
    let (n, mk3) = needles(Task::NiahMultikey3);
    assert_eq!(n, 301);
    assert_eq!(mk3.outputs[0].len(), 36, "a UUID value");
    let (n, mv) = needles(Task::NiahMultivalue);
    assert_eq!((n, mv.outputs.len()), (4, 4));
    assert!(mv.before.starts_with("Some special magic numbers are hidden"), "{}", mv.before);
    let (n, mq) = needles(Task::NiahMultiquery);
    assert_eq!((n, mq.outputs.len()), (4, 4));
    assert!(mq.after.contains(", and "), "four keys asked: {}", mq.after);
    // The singular template for one value asked.
    let single = needles(Task::NiahSingle3).1;
    assert!(single.before.starts_with("A special magic uuid is hidden"), "{}", single.before);
    assert!(
        single.after.starts_with("\nWhat is the special magic uuid for "),
        "{}",
        single.after
    );
    assert!(single.answer_prefix.ends_with("mentioned in the provided text is"));
    assert!(
        single.context.contains("One of the special magic uuids for "),
        "needles keep the plural"
    );
}

#[test]
fn the_needle_goes_to_its_depth() {
    let s = sources();
    for task in [Task::NiahSingle1, Task::NiahSingle2] {
        for depth in [0.0, 25.0, 50.0, 75.0, 100.0] {
            let sample = s.sample(&trial(task, depth, 7), 2000);
            let at = sample.copy_spans[0].start as f64 / sample.context.len() as f64 * 100.0;
            assert!((at - depth).abs() < 4.0, "{task}: asked {depth}%, landed at {at:.1}%");
        }
    }
}

#[test]
fn variable_tracking_asks_for_the_whole_chain() {
    let sample = sources().sample(&trial(Task::Vt, 0.0, 2), 500);
    assert_eq!(sample.outputs.len(), 5);
    let value = sample.after.split("the value ").nth(1).unwrap().split(' ').next().unwrap();
    let first = format!("VAR {} = {value}", sample.outputs[0]);
    assert!(sample.context.contains(&first), "the chain starts at the asked value");
    for hop in sample.outputs.windows(2) {
        assert!(sample.context.contains(&format!("VAR {} = VAR {} ", hop[1], hop[0])));
    }
    // One worked example (three-letter variables) precedes the question.
    assert_eq!(sample.before.matches("Memorize and track").count(), 2);
    // Every occurrence of an asked variable in the chain is a span: 2 per hop, 1 for the last.
    assert_eq!(sample.copy_spans.len(), 9);
}

#[test]
fn common_words_are_the_ten_most_common() {
    let sample = sources().sample(&trial(Task::Cwe, 0.0, 4), 200);
    let mut counts = std::collections::HashMap::new();
    for entry in sample.context.split(' ').filter(|w| !w.ends_with('.')) {
        *counts.entry(entry).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 200);
    for w in &sample.outputs {
        assert_eq!(counts[w.as_str()], 30, "{w}");
    }
    assert!(counts.values().filter(|&&c| c == 3).count() == 190);
    // A short list (below 4,096 tokens) repeats 6 and 1 times.
    let short = sources().sample(
        &Trial {
            length: 2048,
            ..trial(Task::Cwe, 0.0, 4)
        },
        50,
    );
    let first = short.context.split(' ').filter(|w| *w == short.outputs[0]).count();
    assert_eq!(first, 6);
}

#[test]
fn frequent_words_follow_zipf() {
    let sample = sources().sample(&trial(Task::Fwe, 0.0, 5), 10_000);
    let count = |w: &str| sample.context.split(' ').filter(|x| *x == w).count();
    let zeta2 = std::f64::consts::PI.powi(2) / 6.0;
    assert_eq!(count("..."), (10_000.0 / zeta2) as usize);
    for (k, w) in sample.outputs.iter().enumerate() {
        assert_eq!(count(w), (10_000.0 / ((k + 2) as f64).powi(2) / zeta2) as usize, "{w}");
    }
}

#[test]
fn qa_puts_the_gold_document_among_distractors() {
    let s = sources();
    let sample = s.sample(&trial(Task::Qa, 50.0, 6), 5000);
    let gold = &crate::experiments::qa::builtin()[6];
    assert!(sample.after.ends_with(&gold.question));
    assert_eq!(sample.outputs, gold.answers);
    let docs = sample.context.matches("Document ").count();
    assert!(docs >= 5, "{docs} documents");
    let at = sample.context.find(&gold.context).unwrap() as f64 / sample.context.len() as f64;
    assert!((0.3..0.7).contains(&at), "gold document at {at:.2}");
    assert!(!sample.copy_spans.is_empty());
}

#[test]
fn draws_are_seeded() {
    let s = sources();
    for task in Task::ALL {
        let a = s.sample(&trial(task, 50.0, 1), 300);
        let b = s.sample(&trial(task, 50.0, 1), 300);
        let c = s.sample(&trial(task, 50.0, 2), 300);
        assert_eq!((&a.context, &a.outputs), (&b.context, &b.outputs), "{task}");
        assert_ne!(a.outputs, c.outputs, "{task}");
    }
}

/// RULER's two metrics on written cases (`string_match_all`, `string_match_part`).
#[test]
fn metrics_score_as_ruler_scores() {
    let outs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        score(Metric::All, "The numbers are 1234567 and 7654321.", &outs(&["1234567", "7654321"])),
        100.0
    );
    assert_eq!(score(Metric::All, "1234567", &outs(&["1234567", "7654321", "1", "2"])), 75.0);
    assert_eq!(
        score(Metric::All, "ABCDE fghij", &outs(&["abcde", "FGHIJ", "KLMNO", "PQRST"])),
        50.0
    );
    assert_eq!(score(Metric::All, "nothing", &outs(&["x"])), 0.0);
    assert_eq!(
        score(Metric::Part, "in a waterproof tin", &outs(&["a waterproof tin", "other"])),
        100.0
    );
    assert_eq!(score(Metric::Part, "a box", &outs(&["a waterproof tin"])), 0.0);
}

#[test]
fn units_fit_the_budget() {
    // A context of 7 tokens per unit plus 11: the largest that fits 1000 is 141 units.
    let (units, tokens) = fit_units(1000, |u| Ok(7 * u + 11)).unwrap();
    assert_eq!((units, tokens), (141, 998));
    assert!(fit_units(10, |u| Ok(7 * u + 11)).is_err());
}

#[test]
fn names_are_the_same_in_flags_and_records() {
    use clap::ValueEnum;
    for task in Task::ALL {
        assert_eq!(task.to_possible_value().unwrap().get_name(), task.name());
        assert_eq!(serde_json::to_value(task).unwrap(), task.name());
    }
}

/// QRHead's content-free form of a sample asks "N/A" where the question named its query, in the
/// question and in the answer prefix, and changes nothing else; the tasks with a fixed question
/// have none.
#[test]
fn the_content_free_sample_replaces_only_the_query() {
    let s = sources();
    for task in Task::ALL {
        let sample = s.sample(&trial(task, 50.0, 2), 300);
        let Some(null) = sample.content_free("N/A") else {
            assert!(!task.copies(), "{task} copies its answer but has no query");
            continue;
        };
        assert!(
            sample.after.contains(&sample.query),
            "{task}: the question does not name {:?}",
            sample.query
        );
        assert!(
            !null.after.contains(&sample.query) && null.after.contains("N/A"),
            "{task}: {:?}",
            null.after
        );
        assert!(!null.answer_prefix.contains(&sample.query), "{task}: {:?}", null.answer_prefix);
        assert_eq!(
            (&null.before, &null.context, &null.copy_spans),
            (&sample.before, &sample.context, &sample.copy_spans)
        );
    }
}
