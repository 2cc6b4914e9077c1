//! The Slurm example on a real Slurm: a private single-node cluster (munged, slurmctld and slurmd
//! started by tests/slurm/cluster.sh, stopped at the end whatever happens), the detection grid
//! submitted by examples/slurm/detect.sbatch as `sbatch --array=0-2` with `--shard auto` plus a
//! merge job that waits for the array with `--expect 3`; the merged head scores must equal an
//! unsharded run's on the same grid.
//!
//! Where the daemons cannot run (not root, not installed, no way to start them), the test says so
//! and why and returns without having checked anything. scripts/test.sh installs Slurm and sets
//! HEADHUNT_REQUIRE_SLURM=1 when it runs as root: there a skip is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GRID: &str = "--lengths 200,300 --depths 0,50,100";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Stops the cluster when dropped: after the test, and when an assertion fails.
struct Cluster {
    dir: PathBuf,
    /// Whether the controller came up (and may hold jobs to cancel).
    up: bool,
}

impl Cluster {
    /// Start one, or the reason it cannot start here.
    fn start(dir: &Path) -> Result<Cluster, String> {
        let out = Command::new("bash")
            .arg(repo().join("tests/slurm/cluster.sh"))
            .arg("start")
            .arg(dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        // Stops, when dropped, whatever the script started.
        let mut cluster = Cluster {
            dir: dir.to_owned(),
            up: false,
        };
        match out.status.code() {
            Some(0) => {
                cluster.up = true;
                Ok(cluster)
            }
            // cluster.sh's "cannot run here".
            Some(3) => Err(stderr),
            _ => panic!("tests/slurm/cluster.sh start failed: {stderr}"),
        }
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    /// A Slurm client command run against this cluster; its stdout.
    fn client(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).env("SLURM_CONF", self.conf()).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The states of a job's tasks (one per array task), e.g. ["COMPLETED", "RUNNING"].
    fn states(&self, job: &str) -> Vec<String> {
        self.client("scontrol", &["-o", "show", "job", job])
            .lines()
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("JobState=")).map(str::to_owned))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.up {
            Command::new("scancel")
                .args(["--full", "--user", "root"])
                .env("SLURM_CONF", self.conf())
                .stderr(Stdio::null())
                .status()
                .ok();
        }
        let stopped = Command::new("bash")
            .arg(repo().join("tests/slurm/cluster.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            eprintln!("warning: tests/slurm/cluster.sh stop {} failed", self.dir.display());
        }
    }
}

#[test]
fn a_slurm_array_finds_the_heads_one_process_finds() {
    let scratch = std::env::temp_dir().join(format!("headhunt-slurm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let cluster = match Cluster::start(&scratch.join("cluster")) {
        Ok(c) => c,
        Err(why) => {
            assert!(
                std::env::var_os("HEADHUNT_REQUIRE_SLURM").is_none(),
                "HEADHUNT_REQUIRE_SLURM is set, but Slurm cannot run here: {why}"
            );
            eprintln!("SKIPPED a_slurm_array_finds_the_heads_one_process_finds: {why}");
            return;
        }
    };
    let headhunt = env!("CARGO_BIN_EXE_headhunt");
    // The same grid in one process, for comparison.
    let whole = scratch.join("whole");
    let ok = Command::new(headhunt)
        .args(["detect", "--out"])
        .arg(&whole)
        .args(GRID.split(' '))
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "the unsharded run failed");

    // Submitted as a user would: the example script, run on the "login node".
    let run = scratch.join("run");
    let submitted = Command::new("bash")
        .arg(repo().join("examples/slurm/detect.sbatch"))
        .current_dir(&scratch)
        .env("SLURM_CONF", cluster.conf())
        .env("HEADHUNT", headhunt)
        .env("OUT", &run)
        .env("SHARDS", "3")
        .env("GRID", GRID)
        // The example asks for 4 CPUs and 8 GB; this node may have 2.
        .env("SBATCH_ARGS", "--cpus-per-task=1 --mem=1G")
        .env_remove("SLURM_JOB_ID")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&submitted.stdout).into_owned();
    assert!(
        submitted.status.success(),
        "submitting: {said}{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    // "submitted array job 1 (3 shards) and merge job 2"
    let words: Vec<&str> = said.split_whitespace().collect();
    let after = |w: &str| words.iter().position(|&x| x == w).map(|i| words[i + 1].to_owned()).expect(&said);
    let (array, merge) = (after("job"), words[words.iter().rposition(|&x| x == "job").unwrap() + 1].to_owned());
    assert_ne!(array, merge);

    // Wait for the merge job, which starts only when every array task has succeeded.
    let start = Instant::now();
    let finished = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"];
    loop {
        let states = cluster.states(&merge);
        if states.iter().all(|s| finished.contains(&s.as_str())) && !states.is_empty() {
            break;
        }
        let array_states = cluster.states(&array);
        assert!(
            !array_states.iter().any(|s| s != "COMPLETED" && finished.contains(&s.as_str())),
            "an array task ended badly: {array_states:?}; its output is in {}",
            scratch.display()
        );
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the jobs did not finish in 10 minutes: array {array_states:?}, merge {states:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let array_states = cluster.states(&array);
    assert_eq!(array_states, ["COMPLETED"; 3], "the array's tasks");
    let merge_log = std::fs::read_to_string(scratch.join(format!("headhunt-merge-{merge}.out"))).unwrap_or_default();
    assert_eq!(cluster.states(&merge), ["COMPLETED"], "the merge job: {merge_log}");
    assert!(merge_log.contains("merged 6 new trials from 3 shards"), "{merge_log}");

    // Each task wrote its own shard, from the array's environment.
    for i in 1..=3 {
        let trials = std::fs::read_to_string(run.join(format!("shards/{i}-of-3/trials.jsonl"))).unwrap();
        assert_eq!(trials.lines().count(), 2, "shard {i}/3");
    }
    let read = |dir: &Path| std::fs::read_to_string(dir.join("head_scores.json")).unwrap();
    assert_eq!(read(&run), read(&whole), "the merged head scores differ from the unsharded run's");
    let status = Command::new(headhunt).arg("status").arg(&run).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("6 of 6 trials (100%), 3 of 3 shards finished; done"), "{status}");
    eprintln!("slurm: array {array} (3 tasks) and merge {merge} completed; merged head scores equal the unsharded run's");
    drop(cluster);
    std::fs::remove_dir_all(&scratch).ok();
}
