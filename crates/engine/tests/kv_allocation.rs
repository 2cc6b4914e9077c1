//! The KV bytes a run reports are the bytes it allocated: measured by a counting allocator.

mod common;

use std::sync::atomic::Ordering;

use common::LIVE;
use headhunt_engine::{Hooks, KvPolicy, RunOptions};

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

#[test]
fn reported_kv_bytes_are_the_allocated_bytes() {
    // Threads keep scratch they make on their first product (gemm's packing buffers, the
    // engine's tiles), and rayon's queues allocate and free from whichever thread runs a job. So
    // that every allocation counted belongs to this run, the whole test runs on the one worker of
    // a one-thread pool: the warm-up makes every buffer, and nothing happens on another thread.
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool")
        .install(count_kv_bytes);
}

fn count_kv_bytes() {
    let m = common::tiny_model();
    let c = m.config.clone();
    let capacity = 400;
    let mut mixed = vec![vec![KvPolicy::Full; c.n_kv_heads]; c.n_layers];
    mixed[0][1] = KvPolicy::SinkWindow { sink: 4, window: 16 };
    mixed[1][0] = KvPolicy::SinkWindow { sink: 0, window: 8 };
    let prompt: Vec<u32> = (0..30).map(|i| (i * 37 % 256) as u32).collect();
    // The thread pool and the matmul scratch buffers persist after the first forward pass; make
    // them exist before counting.
    let mut warm = m.run(Hooks::default(), RunOptions::default()).unwrap();
    warm.prefill(&prompt).unwrap();
    warm.decode(1).unwrap();
    drop(warm);
    for policy in [None, Some(mixed)] {
        let before = LIVE.load(Ordering::SeqCst);
        let mut run = m
            .run(
                Hooks::default(),
                RunOptions {
                    capacity,
                    kv_policy: policy.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
        // After creating the run, after the prompt and after decoding, what the run holds is
        // what the cache reports (activations are freed between calls; a run's other
        // bookkeeping is small).
        let check = |run: &headhunt_engine::Run<'_>, when: &str| {
            let allocated = LIVE.load(Ordering::SeqCst) - before;
            let reported = run.cache().bytes() as isize;
            assert!(
                (allocated - reported).abs() < 4096,
                "{policy:?} {when}: allocated {allocated}, reported {reported}"
            );
            reported as usize
        };
        check(&run, "at creation");
        run.prefill(&prompt).unwrap();
        check(&run, "after the prompt");
        run.decode(1).unwrap();
        let bytes = check(&run, "while decoding");
        let row_bytes = 4 * (2 * c.d_head + 1);
        let full_rows = capacity * c.n_layers * c.n_kv_heads;
        match policy {
            None => assert_eq!(bytes, full_rows * row_bytes),
            // While decoding, the two compressed heads hold their sink and window only.
            Some(_) => assert_eq!(bytes, (full_rows - 2 * capacity + (4 + 16) + 8) * row_bytes),
        }
        drop(run);
    }
}
