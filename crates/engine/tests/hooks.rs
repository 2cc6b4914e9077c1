//! Hooks do what they say, and nothing else.

mod common;

use std::collections::BTreeMap;

use headhunt_engine::{Capture, HookPoint, Hooks, Intervention, KeySet, MaskMode, Model, Phase, Positions, RunOptions};

const PROMPT: &[u32] = &[72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 101];

fn run(model: &Model, hooks: Hooks, prompt: &[u32]) -> (Vec<f32>, headhunt_engine::Recording) {
    let mut r = model.run(hooks, RunOptions::default()).unwrap();
    let logits = r.prefill(prompt).unwrap();
    (logits, r.recording)
}

fn all_patterns(layers: usize) -> Hooks {
    (0..layers).fold(Hooks::default(), |h, l| {
        h.capture(Capture::new(HookPoint::Pattern(l), Positions::All))
    })
}

#[test]
fn captures_do_not_change_the_computation() {
    let m = common::tiny_model();
    let (plain, _) = run(&m, Hooks::default(), PROMPT);
    let mut hooks = all_patterns(2).capture(Capture::new(HookPoint::ResidPost(1), Positions::All));
    hooks = hooks.capture(Capture::new(HookPoint::Result(0), Positions::Last));
    let (captured, rec) = run(&m, hooks, PROMPT);
    assert_eq!(plain, captured);
    assert_eq!(rec.get(HookPoint::ResidPost(1)).unwrap().positions.len(), PROMPT.len());
    assert_eq!(rec.get(HookPoint::Result(0)).unwrap().positions, vec![PROMPT.len() - 1]);
}

#[test]
fn zero_mask_zeroes_the_heads_result() {
    let m = common::tiny_model();
    let c = m.config.clone();
    let hooks = Hooks::default()
        .intervene(Intervention::MaskHead {
            layer: 1,
            head: 2,
            mode: MaskMode::Zero,
            phase: Phase::Both,
        })
        .capture(Capture::new(HookPoint::Result(1), Positions::All));
    let (_, rec) = run(&m, hooks, PROMPT);
    let rows = rec.get(HookPoint::Result(1)).unwrap();
    for i in 0..rows.positions.len() {
        let row = rows.row(i);
        for h in 0..c.n_heads {
            let head = &row[h * c.d_model..(h + 1) * c.d_model];
            if h == 2 {
                assert!(head.iter().all(|&x| x == 0.0), "masked head's result is not exactly zero");
            } else {
                assert!(head.iter().any(|&x| x != 0.0));
            }
        }
    }
}

#[test]
fn uniform_mask_attends_uniformly_to_the_visible_keys() {
    let m = common::tiny_model();
    let hooks = all_patterns(2).intervene(Intervention::MaskHead {
        layer: 0,
        head: 3,
        mode: MaskMode::Uniform,
        phase: Phase::Both,
    });
    let (_, rec) = run(&m, hooks, PROMPT);
    for row in &rec.patterns[&0] {
        let probs = &row.values[3 * row.n_keys..4 * row.n_keys];
        let want = 1.0 / (row.position + 1) as f32;
        assert!(probs.iter().all(|&p| (p - want).abs() < 1e-6), "query {}: {probs:?}", row.position);
        // The other heads are not uniform.
        let other = &row.values[..row.n_keys];
        assert!(row.position == 0 || other.iter().any(|&p| (p - want).abs() > 1e-4));
    }
}

#[test]
fn mean_mask_replaces_the_heads_output_and_phases_are_respected() {
    let m = common::tiny_model();
    let dh = m.config.d_head;
    let mean: Vec<f32> = (0..dh).map(|i| i as f32 * 0.25 - 0.5).collect();
    let mask = |phase| Intervention::MaskHead {
        layer: 1,
        head: 0,
        mode: MaskMode::Mean(mean.clone()),
        phase,
    };
    let hooks = Hooks::default()
        .intervene(mask(Phase::Both))
        .capture(Capture::new(HookPoint::Z(1), Positions::All));
    let (_, rec) = run(&m, hooks, PROMPT);
    let z = rec.get(HookPoint::Z(1)).unwrap();
    for i in 0..z.positions.len() {
        assert_eq!(&z.row(i)[..dh], &mean[..]);
    }
    // A decode-only mask leaves the prompt alone and changes the generated step.
    let (plain_prefill, _) = run(&m, Hooks::default(), PROMPT);
    let mut r = m
        .run(Hooks::default().intervene(mask(Phase::Decode)), RunOptions::default())
        .unwrap();
    assert_eq!(r.prefill(PROMPT).unwrap(), plain_prefill);
    let masked_step = r.decode(65).unwrap();
    let mut plain = m.run(Hooks::default(), RunOptions::default()).unwrap();
    plain.prefill(PROMPT).unwrap();
    assert_ne!(plain.decode(65).unwrap(), masked_step);
}

#[test]
fn restricted_keys_are_the_only_ones_attended() {
    let m = common::tiny_model();
    let hooks = all_patterns(2)
        .intervene(Intervention::RestrictKeys {
            layer: 1,
            head: 1,
            keys: KeySet::SelfOnly,
            phase: Phase::Both,
        })
        .intervene(Intervention::RestrictKeys {
            layer: 1,
            head: 2,
            keys: KeySet::Only(vec![0, 3]),
            phase: Phase::Both,
        });
    let (_, rec) = run(&m, hooks, PROMPT);
    for row in &rec.patterns[&1] {
        let (n, p) = (row.n_keys, row.position);
        let own = &row.values[n..2 * n];
        assert!((own[p] - 1.0).abs() < 1e-6 && own.iter().enumerate().all(|(k, &x)| k == p || x == 0.0));
        let two = &row.values[2 * n..3 * n];
        let allowed: Vec<usize> = [0usize, 3].into_iter().filter(|&k| k <= p).collect();
        assert!(two.iter().enumerate().all(|(k, &x)| allowed.contains(&k) || x == 0.0));
        assert!((allowed.iter().map(|&k| two[k]).sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn added_vectors_land_where_asked() {
    let m = common::tiny_model();
    let d = m.config.d_model;
    let v: Vec<f32> = (0..d).map(|i| (i as f32).sin()).collect();
    let cap = |h: Hooks| h.capture(Capture::new(HookPoint::ResidPost(0), Positions::All));
    let (_, plain) = run(&m, cap(Hooks::default()), PROMPT);
    let (_, added) = run(
        &m,
        cap(Hooks::default().intervene(Intervention::Add {
            point: HookPoint::ResidPost(0),
            positions: Positions::At(vec![2]),
            vector: v.clone(),
        })),
        PROMPT,
    );
    let (a, b) = (
        plain.get(HookPoint::ResidPost(0)).unwrap(),
        added.get(HookPoint::ResidPost(0)).unwrap(),
    );
    for i in 0..PROMPT.len() {
        let want: Vec<f32> = if i == 2 {
            a.row(i).iter().zip(&v).map(|(x, y)| x + y).collect()
        } else {
            a.row(i).to_vec()
        };
        assert_eq!(b.row(i), &want[..], "position {i}");
    }
}

#[test]
fn patching_a_whole_residual_reproduces_the_source_run() {
    let m = common::tiny_model();
    let other: Vec<u32> = PROMPT.iter().map(|t| (t + 7) % 256).collect();
    let (source_logits, source) = run(
        &m,
        Hooks::default().capture(Capture::new(HookPoint::ResidMid(1), Positions::All)),
        &other,
    );
    let rows = source.get(HookPoint::ResidMid(1)).unwrap();
    let patch: BTreeMap<usize, Vec<f32>> = (0..rows.positions.len())
        .map(|i| (rows.positions[i], rows.row(i).to_vec()))
        .collect();
    let (patched, _) = run(
        &m,
        Hooks::default().intervene(Intervention::Set {
            point: HookPoint::ResidMid(1),
            head: None,
            rows: patch,
        }),
        PROMPT,
    );
    assert_eq!(patched, source_logits);
}

#[test]
fn a_run_stopped_at_a_layer_captures_what_the_whole_run_does_below_it() {
    let m = common::tiny_model();
    let hooks = || all_patterns(1).capture(Capture::new(HookPoint::ResidPost(0), Positions::All));
    let (logits, whole) = run(&m, hooks(), PROMPT);
    let mut r = m
        .run(
            hooks(),
            RunOptions {
                stop_at_layer: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(r.prefill(PROMPT).unwrap().is_empty(), "a stopped run computes no logits");
    assert!(!logits.is_empty());
    assert_eq!(r.recording.patterns[&0].len(), whole.patterns[&0].len());
    for (a, b) in r.recording.patterns[&0].iter().zip(&whole.patterns[&0]) {
        assert_eq!(a.values, b.values);
    }
    assert_eq!(
        r.recording.get(HookPoint::ResidPost(0)).unwrap().data,
        whole.get(HookPoint::ResidPost(0)).unwrap().data
    );
    assert!(r.decode(5).unwrap().is_empty());
}
