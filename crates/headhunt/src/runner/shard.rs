//! Splitting a run's trials over processes: `--shard i/n`, or `--shard auto`, which reads the
//! shard from a scheduler's environment (a Slurm job array, a Kubernetes Indexed Job). A shard
//! writes only its own folder, `OUT/shards/I-of-N`; `headhunt merge OUT --expect N` joins them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Shard `index` of `count` (1-based): it runs trials `k` with `k % count == index - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a shard: write i/n with 1 <= i <= n (e.g. 2/4), or auto");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    pub fn takes(&self, k: usize) -> bool {
        k % self.count == self.index - 1
    }

    /// How many of `total` trials (numbered 0..total) this shard runs.
    pub fn share(&self, total: usize) -> usize {
        (0..total).filter(|&k| self.takes(k)).count()
    }

    /// The folder this shard of a run writes: `out/shards/I-of-N`.
    pub fn folder(&self, out: &Path) -> PathBuf {
        out.join(SHARDS_DIR).join(format!("{}-of-{}", self.index, self.count))
    }
}

/// The subfolder of a sharded run that holds its shards' folders.
pub const SHARDS_DIR: &str = "shards";

/// The folder a command writes: `out` itself, or the shard's own folder under it.
pub fn run_folder(out: &Path, shard: Option<Shard>) -> PathBuf {
    shard.map_or_else(|| out.to_path_buf(), |s| s.folder(out))
}

/// The shard folders of a split run, `run/shards/*`, in shard order.
pub fn shard_folders(run: &Path) -> Result<Vec<PathBuf>> {
    let dir = run.join(SHARDS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut folders: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    // `2-of-10` before `10-of-10`.
    let order = |p: &PathBuf| {
        let name = p.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let index = name.split_once("-of-").and_then(|(i, _)| i.parse::<usize>().ok());
        (index.is_none(), index, name)
    };
    folders.sort_by_key(order);
    Ok(folders)
}

/// What `--shard` says: a fixed shard, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    Fixed(Shard),
    Auto,
}

impl std::str::FromStr for ShardSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(ShardSpec::Auto)
        } else {
            s.parse().map(ShardSpec::Fixed)
        }
    }
}

/// The shard a process runs, if any: `spec` as `--shard` gives it, `auto` read from the
/// scheduler's variables (looked up with `env`), checked against `--shards`.
pub fn resolve_shard(spec: Option<ShardSpec>, shards: Option<usize>, env: impl Fn(&str) -> Option<String>) -> Result<Option<Shard>> {
    let shard = match spec {
        None => return Ok(None),
        Some(ShardSpec::Fixed(s)) => s,
        Some(ShardSpec::Auto) => from_scheduler(&env, shards)?,
    };
    if let Some(n) = shards.filter(|&n| n != shard.count) {
        bail!(
            "--shards {n} disagrees with the shard {shard}: {n} shards were named, {} found",
            shard.count
        );
    }
    Ok(Some(shard))
}

/// The shard of a Slurm array task or a Kubernetes Indexed Job's pod.
fn from_scheduler(env: &impl Fn(&str) -> Option<String>, shards: Option<usize>) -> Result<Shard> {
    let number = |name: &str| -> Result<Option<usize>> {
        match env(name) {
            None => Ok(None),
            Some(v) => match v.trim().parse() {
                Ok(n) => Ok(Some(n)),
                Err(_) => bail!("--shard auto: {name}={v:?} is not a number"),
            },
        }
    };
    if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
        let (Some(count), Some(min)) = (number("SLURM_ARRAY_TASK_COUNT")?, number("SLURM_ARRAY_TASK_MIN")?) else {
            bail!("--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT or SLURM_ARRAY_TASK_MIN is not (a Slurm older than 17.02?); write --shard $((SLURM_ARRAY_TASK_ID+1))/N instead");
        };
        let max = number("SLURM_ARRAY_TASK_MAX")?.unwrap_or(min + count.saturating_sub(1));
        let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
        if count == 0 || step != 1 || max + 1 != min + count || id < min || id > max {
            bail!(
                "--shard auto: this Slurm array is stepped or sparse ({count} tasks with ids {min} to {max}, step {step}); \
                 shards need consecutive ids: submit with --array={min}-{} (append %K to limit how many run at once), \
                 or give each task its shard yourself with --shard I/{count}",
                min + count.saturating_sub(1)
            );
        }
        if env("JOB_COMPLETION_INDEX").is_some() {
            eprintln!("note: --shard auto: both Slurm and Kubernetes variables are set; using Slurm's");
        }
        return Ok(Shard {
            index: id - min + 1,
            count,
        });
    }
    if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        let Some(count) = shards else {
            bail!("--shard auto: a Kubernetes Indexed Job does not say how many shards it has; add --shards N (its spec.completions)");
        };
        if index >= count {
            bail!(
                "--shard auto: JOB_COMPLETION_INDEX={index} is beyond --shards {count} (indices run from 0 to {})",
                count - 1
            );
        }
        return Ok(Shard { index: index + 1, count });
    }
    if env("SLURM_JOB_ID").is_some() {
        bail!("--shard auto: this Slurm job is not a job array (no SLURM_ARRAY_TASK_ID); submit it with sbatch --array=0-N, or write --shard i/n");
    }
    bail!(
        "--shard auto found no scheduler: it reads a Slurm job array's SLURM_ARRAY_TASK_ID, _COUNT and _MIN, or a Kubernetes \
         Indexed Job's JOB_COMPLETION_INDEX (with --shards N); none is set. Outside those, write --shard i/n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(spec: &str, shards: Option<usize>, vars: &[(&str, &str)]) -> Result<Option<Shard>> {
        resolve_shard(Some(spec.parse().unwrap()), shards, |name| {
            vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        })
    }

    fn shard(index: usize, count: usize) -> Option<Shard> {
        Some(Shard { index, count })
    }

    #[test]
    fn shards_partition_the_grid() {
        let shards: Vec<Shard> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for k in 0..30 {
            assert_eq!(shards.iter().filter(|s| s.takes(k)).count(), 1);
        }
        assert_eq!(shards.iter().map(|s| s.share(10)).collect::<Vec<_>>(), [4, 3, 3]);
        assert!("0/3".parse::<Shard>().is_err() && "4/3".parse::<Shard>().is_err() && "x".parse::<Shard>().is_err());
        assert_eq!("AUTO".parse::<ShardSpec>(), Ok(ShardSpec::Auto));
        assert_eq!(shards[1].folder(Path::new("runs/d")), Path::new("runs/d/shards/2-of-3"));
    }

    #[test]
    fn slurm_arrays() {
        fn array(id: &'static str, min: &'static str, max: &'static str, count: &'static str) -> Vec<(&'static str, &'static str)> {
            vec![
                ("SLURM_JOB_ID", "17"),
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_MIN", min),
                ("SLURM_ARRAY_TASK_MAX", max),
                ("SLURM_ARRAY_TASK_COUNT", count),
            ]
        }
        // --array=0-2: ids 0, 1, 2 are shards 1/3 to 3/3.
        assert_eq!(resolve("auto", None, &array("0", "0", "2", "3")).unwrap(), shard(1, 3));
        assert_eq!(resolve("auto", None, &array("2", "0", "2", "3")).unwrap(), shard(3, 3));
        // --array=5-8 starts anywhere.
        assert_eq!(resolve("auto", None, &array("6", "5", "8", "4")).unwrap(), shard(2, 4));
        // --shards may restate the count, not contradict it.
        assert_eq!(resolve("auto", Some(3), &array("1", "0", "2", "3")).unwrap(), shard(2, 3));
        let e = resolve("auto", Some(4), &array("1", "0", "2", "3")).unwrap_err().to_string();
        assert!(e.contains("--shards 4 disagrees"), "{e}");
        // --array=0-10:2 and --array=1,3,7 are refused, saying what to submit instead.
        let mut stepped = array("4", "0", "10", "6");
        stepped.push(("SLURM_ARRAY_TASK_STEP", "2"));
        let e = resolve("auto", None, &stepped).unwrap_err().to_string();
        assert!(e.contains("stepped or sparse") && e.contains("--array=0-5"), "{e}");
        let e = resolve("auto", None, &array("3", "1", "7", "3")).unwrap_err().to_string();
        assert!(e.contains("stepped or sparse") && e.contains("--array=1-3"), "{e}");
        // A Slurm job that is not an array.
        let e = resolve("auto", None, &[("SLURM_JOB_ID", "17")]).unwrap_err().to_string();
        assert!(e.contains("not a job array"), "{e}");
        let e = resolve("auto", None, &array("x", "0", "2", "3")).unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
    }

    #[test]
    fn kubernetes_indexed_jobs() {
        let pod = [("JOB_COMPLETION_INDEX", "0")];
        assert_eq!(resolve("auto", Some(4), &pod).unwrap(), shard(1, 4));
        assert_eq!(resolve("auto", Some(4), &[("JOB_COMPLETION_INDEX", "3")]).unwrap(), shard(4, 4));
        let e = resolve("auto", None, &pod).unwrap_err().to_string();
        assert!(e.contains("add --shards N"), "{e}");
        let e = resolve("auto", Some(4), &[("JOB_COMPLETION_INDEX", "4")]).unwrap_err().to_string();
        assert!(e.contains("beyond --shards 4"), "{e}");
    }

    #[test]
    fn nothing_set_or_fixed() {
        let e = resolve("auto", None, &[]).unwrap_err().to_string();
        assert!(e.contains("found no scheduler") && e.contains("--shard i/n"), "{e}");
        // A fixed shard ignores the environment.
        assert_eq!(resolve("2/5", None, &[("JOB_COMPLETION_INDEX", "0")]).unwrap(), shard(2, 5));
        assert_eq!(resolve_shard(None, None, |_| None).unwrap(), None);
    }
}
