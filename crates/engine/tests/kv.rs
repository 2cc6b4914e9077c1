//! Per-head KV-cache policies: a compressed head sees exactly its sink and window, and an
//! all-full policy is the plain engine.

mod common;

use headhunt_engine::{Capture, HookPoint, Hooks, KvPolicy, RunOptions};

const PROMPT: &[u32] = &[10, 200, 31, 47, 99, 5, 18, 230, 77, 64, 12, 150, 3, 88, 41, 120, 7, 250];

#[test]
fn a_sink_window_head_attends_to_exactly_its_positions() {
    let m = common::tiny_model();
    let c = m.config.clone();
    let (sink, window) = (2, 3);
    let mut policy = vec![vec![KvPolicy::Full; c.n_kv_heads]; c.n_layers];
    policy[1][0] = KvPolicy::SinkWindow { sink, window };
    let hooks = Hooks::default().capture(Capture::new(HookPoint::Pattern(1), headhunt_engine::Positions::All));
    // Chunks of 4 exercise the ring across prefill calls; then decode steps.
    let mut run = m
        .run(
            hooks,
            RunOptions {
                kv_policy: Some(policy),
                prefill_chunk: 4,
                ..Default::default()
            },
        )
        .unwrap();
    run.prefill(PROMPT).unwrap();
    for t in [9, 90, 190] {
        run.decode(t).unwrap();
    }
    let group = c.n_heads / c.n_kv_heads;
    for row in &run.recording.patterns[&1] {
        let p = row.position;
        for h in 0..c.n_heads {
            let probs = &row.values[h * row.n_keys..(h + 1) * row.n_keys];
            let seen: Vec<usize> = (0..row.n_keys).filter(|&k| probs[k] > 0.0).collect();
            let want: Vec<usize> = if h / group == 0 {
                (0..=p).filter(|&k| k < sink || p - k < window).collect()
            } else {
                (0..=p).collect()
            };
            assert_eq!(seen, want, "head {h}, query {p}");
            assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
    // The compressed head holds its sink and window only (decoding shrank the ring).
    assert_eq!(run.cache().rows()[1], vec![sink + window, PROMPT.len() + 3]);
}

#[test]
fn an_all_full_policy_is_the_plain_engine_bit_for_bit() {
    let m = common::tiny_model();
    let c = m.config.clone();
    let full = vec![vec![KvPolicy::Full; c.n_kv_heads]; c.n_layers];
    let mut plain = m.run(Hooks::default(), RunOptions::default()).unwrap();
    let mut explicit = m
        .run(
            Hooks::default(),
            RunOptions {
                kv_policy: Some(full),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(plain.prefill(PROMPT).unwrap(), explicit.prefill(PROMPT).unwrap());
    for t in [4, 44, 144] {
        assert_eq!(plain.decode(t).unwrap(), explicit.decode(t).unwrap());
    }
}

#[test]
fn a_compressed_cache_gives_the_same_logits_by_prefill_and_by_decoding() {
    // The ring's contents must not depend on how the tokens arrived: one prefill of the whole
    // sequence, chunked prefills that wrap the ring, and token-by-token decoding all see the same
    // sink and window at the last position.
    let m = common::tiny_model();
    let c = m.config.clone();
    let mut policy = vec![vec![KvPolicy::Full; c.n_kv_heads]; c.n_layers];
    policy[0][c.n_kv_heads - 1] = KvPolicy::SinkWindow { sink: 1, window: 4 };
    policy[1][0] = KvPolicy::SinkWindow { sink: 2, window: 3 };
    let options = |chunk| RunOptions {
        kv_policy: Some(policy.clone()),
        prefill_chunk: chunk,
        ..Default::default()
    };
    let whole = m.run(Hooks::default(), options(64)).unwrap().prefill(PROMPT).unwrap();
    let chunked = m.run(Hooks::default(), options(5)).unwrap().prefill(PROMPT).unwrap();
    let mut stepwise = m.run(Hooks::default(), options(64)).unwrap();
    let (head, tail) = PROMPT.split_at(3);
    let mut decoded = stepwise.prefill(head).unwrap();
    for &t in tail {
        decoded = stepwise.decode(t).unwrap();
    }
    for (name, got) in [("chunked prefill", &chunked), ("decoding", &decoded)] {
        let d = common::max_abs_diff(got, &whole);
        assert!(d < 1e-5, "{name} differs from one prefill by {d}");
    }
    // And the compression is real: the last logits differ from the full cache's.
    let full = m.run(Hooks::default(), RunOptions::default()).unwrap().prefill(PROMPT).unwrap();
    assert!(common::max_abs_diff(&full, &whole) > 1e-4);
}
