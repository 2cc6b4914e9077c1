//! The retrieval-head paper's claims (Wu et al. 2024), each measured on one model: what the
//! paper showed, what headhunt measured, the command that measured it, and a verdict by a rule
//! stated beside it.
//!
//! A claims folder holds one run folder per experiment (see [`ClaimsPlan`]); the table reads their
//! JSON outputs, so it can be rebuilt from the folders alone, and a missing experiment leaves its
//! row "not measurable" with the reason.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::experiments::retrieval::compare::compare;
use crate::experiments::retrieval::{Activation, HeadScores, RETRIEVAL_THRESHOLD};

/// Context lengths of the short-context detection run (the claim: heads exist at <= 1,000).
pub const SHORT_LENGTHS: &str = "200:1000:5";
/// Chains of the chain-of-thought task tried, hardest first, until the unmasked model solves
/// at least half of the problems with written steps.
pub const COT_CHAINS: [usize; 3] = [3, 2, 1];

/// The experiments of a claims folder and the command line of each.
#[derive(Debug, Clone)]
pub struct ClaimsPlan {
    pub out: PathBuf,
    /// `--model M --precision P`, passed to every command.
    pub model_args: Vec<String>,
    /// Haystacks besides the generated prose (folders or files).
    pub haystacks: Vec<PathBuf>,
    /// Context lengths of the long-context run (every one at least 3,000 tokens).
    pub long_lengths: String,
    /// Heads masked in the masking experiments (top-K and K random).
    pub k: usize,
    /// Chains of the chain-of-thought task (chosen by calibration).
    pub cot_chains: usize,
    pub cot_problems: usize,
    /// Score files of two checkpoints of one family (e.g. the paper's Qwen1.5-14B and -Chat).
    pub checkpoints: Option<(PathBuf, PathBuf)>,
}

impl ClaimsPlan {
    pub fn dir(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    fn path(&self, name: &str) -> String {
        self.dir(name).display().to_string()
    }

    fn command(&self, words: &[&str], rest: &[String]) -> Vec<String> {
        let mut v: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        v.extend(self.model_args.iter().cloned());
        v.extend(rest.iter().cloned());
        v
    }

    /// The folder of the detection run on haystack `i` (0: the generated prose).
    pub fn haystack_dir_name(&self, i: usize) -> String {
        match i {
            0 => "detect".to_owned(),
            _ => {
                let p = &self.haystacks[i - 1];
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("haystack");
                format!("detect-{i}-{stem}")
            }
        }
    }

    /// Detection on the default grid, on the generated prose (`i` = 0) or an extra haystack.
    pub fn detect(&self, i: usize) -> Vec<String> {
        let mut rest = vec!["-o".to_owned(), self.path(&self.haystack_dir_name(i))];
        if i > 0 {
            rest.extend(["--haystack".to_owned(), self.haystacks[i - 1].display().to_string()]);
        }
        self.command(&["detect"], &rest)
    }

    pub fn detect_short(&self) -> Vec<String> {
        self.command(
            &["detect"],
            &["--lengths".into(), SHORT_LENGTHS.into(), "-o".into(), self.path("short")],
        )
    }

    pub fn detect_long(&self) -> Vec<String> {
        self.command(
            &["detect"],
            &["--lengths".into(), self.long_lengths.clone(), "-o".into(), self.path("long")],
        )
    }

    fn masks(&self) -> Vec<String> {
        vec![
            "--scores".into(),
            self.path("detect"),
            "--mask-top".into(),
            self.k.to_string(),
            "--mask-random".into(),
            self.k.to_string(),
        ]
    }

    pub fn niah(&self) -> Vec<String> {
        let rest = vec![
            "--scores".into(),
            self.path("detect"),
            "--ks".into(),
            format!("0,{}", self.k),
            "-o".into(),
            self.path("niah"),
        ];
        self.command(&["ablate"], &rest)
    }

    pub fn qa(&self) -> Vec<String> {
        let mut rest = self.masks();
        rest.extend(["-o".into(), self.path("qa")]);
        self.command(&["qa"], &rest)
    }

    /// Closed-book recall, 3-shot (where these models know most answers), 100 prompts a task.
    pub fn recall(&self) -> Vec<String> {
        let mut rest = self.masks();
        rest.extend([
            "--shots".into(),
            "3".into(),
            "--sample".into(),
            "100".into(),
            "-o".into(),
            self.path("recall"),
        ]);
        self.command(&["recall", "eval"], &rest)
    }

    pub fn cot_dir_name(chains: usize) -> String {
        format!("cot-{chains}-chains")
    }

    /// The chain-of-thought task at `chains`, unmasked only (`masked` false) or with the masks.
    pub fn cot(&self, chains: usize, masked: bool) -> Vec<String> {
        let mut rest = if masked { self.masks() } else { Vec::new() };
        rest.extend([
            "--chains".into(),
            chains.to_string(),
            "--problems".into(),
            self.cot_problems.to_string(),
            "-o".into(),
            self.path(&Self::cot_dir_name(chains)),
        ]);
        self.command(&["cot"], &rest)
    }

    pub fn compare(&self, a: &Path, b: &Path) -> Vec<String> {
        vec![
            "compare".into(),
            a.display().to_string(),
            b.display().to_string(),
            "-o".into(),
            self.out.display().to_string(),
        ]
    }
}

/// A command line as one would type it.
pub fn shell(argv: &[String]) -> String {
    std::iter::once("headhunt".to_owned())
        .chain(argv.iter().map(|a| {
            if a.chars().all(|c| c.is_alphanumeric() || "-_./:,=".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        }))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "reason")]
pub enum Verdict {
    Holds,
    DoesNotHold,
    NotMeasurable(String),
}

impl Verdict {
    pub fn text(&self) -> String {
        match self {
            Verdict::Holds => "holds".into(),
            Verdict::DoesNotHold => "does not hold".into(),
            Verdict::NotMeasurable(why) => format!("not measurable here: {why}"),
        }
    }

    fn of(holds: bool) -> Self {
        if holds {
            Verdict::Holds
        } else {
            Verdict::DoesNotHold
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    pub claim: &'static str,
    pub paper: &'static str,
    pub measured: String,
    pub commands: Vec<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// How the verdict follows from the measurement.
    pub rule: &'static str,
}

/// What a row says: the claim, the paper's evidence and the verdict's rule.
struct Row {
    claim: &'static str,
    paper: &'static str,
    rule: &'static str,
}

impl Row {
    /// The row for a measurement: what was measured and whether the rule holds, or why it could
    /// not be measured.
    fn measured(&self, commands: Vec<String>, outcome: Result<(String, bool)>) -> Claim {
        let (measured, verdict) = match outcome {
            Ok((measured, holds)) => (measured, Verdict::of(holds)),
            Err(e) => (String::new(), Verdict::NotMeasurable(format!("{e:#}"))),
        };
        Claim {
            claim: self.claim,
            paper: self.paper,
            measured,
            commands,
            verdict,
            rule: self.rule,
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{} is missing (run its command)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// A task's score unmasked, with the top-K heads masked and with each draw of K random heads.
#[derive(Debug, Clone, PartialEq)]
pub struct Masked {
    pub none: f64,
    pub top: f64,
    pub random: Vec<f64>,
}

impl Masked {
    /// From `(condition label, score)` pairs labelled none / top-K / random-K-seedS.
    pub fn from_labelled(k: usize, rows: impl IntoIterator<Item = (String, f64)>) -> Result<Self> {
        let (mut none, mut top, mut random) = (None, None, Vec::new());
        let (top_label, random_prefix) = (format!("top-{k}"), format!("random-{k}-seed"));
        for (label, v) in rows {
            if label == "none" {
                none = Some(v);
            } else if label == top_label {
                top = Some(v);
            } else if label.starts_with(&random_prefix) {
                random.push(v);
            }
        }
        let none = none.context("no unmasked condition")?;
        let top = top.with_context(|| format!("no condition with the top {k} heads masked"))?;
        if random.is_empty() {
            anyhow::bail!("no condition with {k} random heads masked");
        }
        Ok(Masked { none, top, random })
    }

    pub fn random_mean(&self) -> f64 {
        self.random.iter().sum::<f64>() / self.random.len() as f64
    }

    /// The share of the unmasked score lost (0 when the unmasked score is 0).
    fn lost(&self, masked: f64) -> f64 {
        if self.none > 0.0 {
            1.0 - masked / self.none
        } else {
            0.0
        }
    }

    pub fn top_loss(&self) -> f64 {
        self.lost(self.top)
    }

    pub fn random_loss(&self) -> f64 {
        self.lost(self.random_mean())
    }

    /// Whether the top-K mask scores below every random draw.
    pub fn top_below_random(&self) -> bool {
        self.random.iter().all(|&r| self.top < r)
    }

    fn describe(&self, what: &str) -> String {
        let draws: Vec<String> = self.random.iter().map(|r| format!("{r:.1}")).collect();
        format!(
            "{what} {:.1} unmasked, {:.1} top-K ({:+.0}%), random-K {} (mean {:+.0}%)",
            self.none,
            self.top,
            -100.0 * self.top_loss(),
            draws.join(" / "),
            -100.0 * self.random_loss()
        )
    }
}

/// NIAH from `ablate`'s ablation.json: mean ROUGE-1 recall.
pub fn niah_masked(dir: &Path, k: usize) -> Result<Masked> {
    let v = read_json(&dir.join("ablation.json"))?;
    let sweep = v["sweep"].as_array().context("ablation.json has no sweep")?;
    let row = |k: usize| sweep.iter().find(|r| r["k"].as_u64() == Some(k as u64));
    let none = row(0).and_then(|r| r["top"].as_f64()).context("ablation.json has no K = 0")?;
    let r = row(k).with_context(|| format!("ablation.json has no K = {k}"))?;
    Ok(Masked {
        none,
        top: r["top"].as_f64().context("no top-K score")?,
        random: r["random_draws"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default(),
    })
}

/// Extractive QA from qa.json: token F1.
pub fn qa_masked(dir: &Path, k: usize) -> Result<Masked> {
    let v = read_json(&dir.join("qa.json"))?;
    let rows = v["conditions"].as_array().context("qa.json lists no conditions")?;
    Masked::from_labelled(
        k,
        rows.iter().map(|r| {
            (
                r["condition"].as_str().unwrap_or("").to_owned(),
                r["f1"].as_f64().unwrap_or(f64::NAN),
            )
        }),
    )
}

/// Closed-book recall from `recall eval`'s eval.json: top-1 accuracy (percent), averaged over
/// its tasks and shot counts.
pub fn recall_masked(dir: &Path, k: usize) -> Result<Masked> {
    let v = read_json(&dir.join("eval.json"))?;
    let rows = v["results"].as_array().context("eval.json lists no results")?;
    let mut by: Vec<(String, Vec<f64>)> = Vec::new();
    for r in rows {
        let label = r["condition"].as_str().unwrap_or("none").to_owned();
        let acc = 100.0 * r["accuracy"].as_f64().unwrap_or(f64::NAN);
        match by.iter_mut().find(|(l, _)| *l == label) {
            Some((_, v)) => v.push(acc),
            None => by.push((label, vec![acc])),
        }
    }
    Masked::from_labelled(k, by.into_iter().map(|(l, v)| (l, v.iter().sum::<f64>() / v.len() as f64)))
}

/// The chain-of-thought task from cot.json: (steps accuracy, direct accuracy, steps restated).
pub fn cot_masked(dir: &Path, k: usize) -> Result<(usize, [Masked; 3])> {
    let v = read_json(&dir.join("cot.json"))?;
    let hops = v["hops"].as_u64().unwrap_or(2) as usize;
    let rows = v["conditions"].as_array().context("cot.json lists no conditions")?;
    let get = |field: &str| {
        Masked::from_labelled(
            k,
            rows.iter().map(|r| {
                (
                    r["condition"].as_str().unwrap_or("").to_owned(),
                    r[field].as_f64().unwrap_or(f64::NAN),
                )
            }),
        )
    };
    Ok((hops, [get("steps_accuracy")?, get("direct_accuracy")?, get("steps_restated")?]))
}

/// Scores and answered trials of a detection run folder.
fn detection(dir: &Path) -> Result<(HeadScores, serde_json::Value)> {
    let scores = HeadScores::load(dir)?;
    let summary = read_json(&dir.join("summary.json"))?;
    Ok((scores, summary))
}

/// The claims table from the folders of a plan.
pub fn table(plan: &ClaimsPlan) -> Vec<Claim> {
    vec![
        universal(plan),
        sparse(plan),
        dynamic(plan).0,
        intrinsic_length(plan),
        intrinsic_checkpoints(plan),
        causal(plan),
        knowledge(plan),
        chain_of_thought(plan),
    ]
}

fn universal(plan: &ClaimsPlan) -> Claim {
    let row = Row {
        claim: "universal",
        paper: "all 4 families and 6 scales studied (Llama-2, Yi, Qwen, Mistral; base, chat, MoE) have retrieval heads",
        rule: "holds if at least one head's mean score exceeds 0.1",
    };
    let outcome = detection(&plan.dir("detect")).map(|(scores, summary)| {
        let n = scores.means().iter().filter(|&&m| m > RETRIEVAL_THRESHOLD).count();
        let text = format!(
            "{n} heads above 0.1 ({} of {} NIAH trials answered); one model, so universality is only this model's instance",
            summary["answered"], summary["trials"]
        );
        (text, n > 0)
    });
    row.measured(vec![shell(&plan.detect(0))], outcome)
}

fn sparse(plan: &ClaimsPlan) -> Claim {
    let row = Row {
        claim: "sparse",
        paper: "less than 5% of attention heads score above 0.1",
        rule: "holds if at most 10% of heads score above 0.1 (a small minority; the paper's 5% is given beside)",
    };
    let outcome = HeadScores::load(&plan.dir("detect")).map(|scores| {
        let means = scores.means();
        let n = means.iter().filter(|&&m| m > RETRIEVAL_THRESHOLD).count();
        let share = n as f64 / means.len().max(1) as f64;
        (format!("{n} of {} heads ({:.1}%)", means.len(), 100.0 * share), share <= 0.10)
    });
    row.measured(vec![shell(&plan.detect(0))], outcome)
}

/// The dynamic-activation row, and the pooled activation (for the plot) unless a run is missing.
pub fn dynamic(plan: &ClaimsPlan) -> (Claim, Option<Activation>) {
    let row = Row {
        claim: "dynamically activated",
        paper: "some heads retrieve whatever the context (12 of them in Llama-2-7B-80K), the rest only in some contexts",
        rule: "holds if, over every haystack's answered trials, at least one head scores above 0.1 in >= 90% of them (always on) and at least one retrieval head in fewer",
    };
    let dirs: Vec<String> = (0..=plan.haystacks.len()).map(|i| plan.haystack_dir_name(i)).collect();
    let commands: Vec<String> = (0..dirs.len()).map(|i| shell(&plan.detect(i))).collect();
    let pooled = || -> Result<Activation> {
        if dirs.len() < 2 {
            anyhow::bail!("needs at least two haystacks (give --haystack)");
        }
        let sets = dirs.iter().map(|d| HeadScores::load(&plan.dir(d))).collect::<Result<Vec<_>>>()?;
        Activation::of(&sets.iter().collect::<Vec<_>>())
    };
    let activation = pooled();
    let outcome = activation.as_ref().map_err(|e| anyhow::anyhow!("{e:#}")).map(|act| {
        let (on, some) = (act.always_on(), act.sometimes());
        let show = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
        let text = format!(
            "over {} answered trials on {} haystacks, all built-in needles: always on {} ({}); retrieval heads active in some contexts {} ({})",
            act.trials,
            dirs.len(),
            on.len(),
            show(&on),
            some.len(),
            show(&some)
        );
        (text, !on.is_empty() && !some.is_empty())
    });
    (row.measured(commands, outcome), activation.ok())
}

/// "top-K overlap n/K, Pearson r" of two score sets, and whether at least half the top-K agree.
fn overlap(a: &HeadScores, b: &HeadScores, k: usize) -> Result<(String, bool)> {
    let k = k.clamp(1, a.n_layers * a.n_heads);
    let c = compare(a, b, k)?;
    let n = c.overlap.iter().find(|o| o.0 == k).map_or(0, |o| o.1);
    Ok((format!("top-{k} overlap {n}/{k}, Pearson r = {:.3}", c.pearson), 2 * n >= k))
}

fn intrinsic_length(plan: &ClaimsPlan) -> Claim {
    let row = Row {
        claim: "intrinsic: short contexts",
        paper: "the retrieval heads of long-context models already exist with short contexts (4K-pretrained Llama-2-7B against its 80K extension)",
        rule: "holds if at least half of the top-K heads at >= 3,000 tokens are top-K at <= 1,000 tokens",
    };
    let commands = vec![
        shell(&plan.detect_short()),
        shell(&plan.detect_long()),
        shell(&plan.compare(&plan.dir("short"), &plan.dir("long"))),
    ];
    let outcome = (|| {
        let (short, long) = (HeadScores::load(&plan.dir("short"))?, HeadScores::load(&plan.dir("long"))?);
        let (text, holds) = overlap(&short, &long, plan.k)?;
        Ok((
            format!("contexts {SHORT_LENGTHS} against {} tokens: {text}", plan.long_lengths),
            holds,
        ))
    })();
    row.measured(commands, outcome)
}

fn intrinsic_checkpoints(plan: &ClaimsPlan) -> Claim {
    let row = Row {
        claim: "intrinsic: checkpoints of a family",
        paper: "continued pre-training, chat tuning and sparse upcycling keep the heads (published scores: Qwen1.5-14B against -Chat)",
        rule: "holds if at least half of the top-K heads of one checkpoint are top-K in the other (K = 20 for the paper's files)",
    };
    let Some((a, b)) = &plan.checkpoints else {
        let why = "one checkpoint of this model here; give two score files with --checkpoints (README: the paper's Qwen1.5-14B files)";
        return row.measured(Vec::new(), Err(anyhow::anyhow!(why)));
    };
    let outcome = (|| {
        let (text, holds) = overlap(&HeadScores::load(a)?, &HeadScores::load(b)?, 20)?;
        Ok((format!("{} against {}: {text}", a.display(), b.display()), holds))
    })();
    row.measured(vec![shell(&plan.compare(a, b))], outcome)
}

fn causal(plan: &ClaimsPlan) -> Claim {
    let row = Row {
        claim: "causal",
        paper: "masking the top-K retrieval heads breaks needle retrieval; masking K random heads does not",
        rule: "holds if the top-K mask scores below every random-K draw",
    };
    let outcome =
        niah_masked(&plan.dir("niah"), plan.k).map(|m| (format!("K = {}: {}", plan.k, m.describe("NIAH ROUGE-1")), m.top_below_random()));
    row.measured(vec![shell(&plan.niah())], outcome)
}

fn knowledge(plan: &ClaimsPlan) -> Claim {
    let row = Row {
        claim: "knowledge against retrieval",
        paper: "masking retrieval heads hurts answers from the context (NIAH, QA) far more than answers from the model's own knowledge",
        rule: "holds if closed-book recall loses less than half the share of its unmasked score under the top-K mask that NIAH and QA each lose",
    };
    let commands = vec![shell(&plan.recall()), shell(&plan.niah()), shell(&plan.qa())];
    let outcome = (|| {
        let recall = recall_masked(&plan.dir("recall"), plan.k)?;
        let niah = niah_masked(&plan.dir("niah"), plan.k)?;
        let qa = qa_masked(&plan.dir("qa"), plan.k)?;
        let text = format!(
            "K = {}: {}; {}; {}",
            plan.k,
            recall.describe("recall accuracy"),
            niah.describe("NIAH"),
            qa.describe("QA F1")
        );
        Ok((text, 2.0 * recall.top_loss() < niah.top_loss().min(qa.top_loss())))
    })();
    row.measured(commands, outcome)
}

fn chain_of_thought(plan: &ClaimsPlan) -> Claim {
    let row = Row {
        claim: "chain-of-thought",
        paper: "masking retrieval heads hurts reasoning that must refer back to the question and context (GSM8K CoT) more than answering directly (MMLU)",
        rule: "holds if the top-K mask scores below every random-K draw in accuracy with written steps",
    };
    let outcome = cot_masked(&plan.dir(&ClaimsPlan::cot_dir_name(plan.cot_chains)), plan.k).map(|(hops, [steps, direct, restated])| {
        let text = format!(
            "{hops}-hop look-ups among {} chains, K = {}: {}; {}; {}",
            plan.cot_chains,
            plan.k,
            steps.describe("accuracy with steps"),
            direct.describe("answering directly"),
            restated.describe("steps restating the facts")
        );
        (text, steps.top_below_random())
    });
    row.measured(vec![shell(&plan.cot(plan.cot_chains, true))], outcome)
}

/// The table as Markdown: claim, paper, measured, commands, verdict.
pub fn markdown(claims: &[Claim]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut t = String::from("| claim | the paper | measured here | command | verdict |\n|---|---|---|---|---|\n");
    for c in claims {
        let commands: Vec<String> = c.commands.iter().map(|x| format!("`{}`", cell(x))).collect();
        t.push_str(&format!(
            "| {} | {} | {} | {} | **{}** ({}) |\n",
            c.claim,
            cell(c.paper),
            cell(&c.measured),
            commands.join("<br>"),
            cell(&c.verdict.text()),
            cell(c.rule)
        ));
    }
    t
}
