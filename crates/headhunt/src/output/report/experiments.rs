//! The report's sections for the experiments beyond detection and masking: QA, chain of
//! thought, the paper's claims, hallucination, KV compression and factual recall, one function
//! each.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{esc, f, inline_svg, json_rows, provenance, read_json, table};

/// `headhunt qa`: token F1 and exact match per condition.
pub(super) fn qa_section(d: &Path, here: &str, sections: &mut BTreeMap<&str, String>) {
    let Some(q) = read_json(&d.join("qa.json")) else { return };
    let rows = json_rows(&q["conditions"], |r| {
        vec![
            r["condition"].as_str().unwrap_or("").into(),
            r["masked_heads"].to_string(),
            r["questions"].to_string(),
            format!("{:.1}", f(&r["f1"])),
            format!("{:.1}", f(&r["exact_match"])),
        ]
    });
    let _ = write!(
        sections.entry("5 qa").or_default(),
        r#"<div class="run"><h3>{} <small>{}</small></h3>{}{}</div>"#,
        esc(q["model"].as_str().unwrap_or("")),
        esc(here),
        table(&["condition", "heads masked", "questions", "token F1", "exact match"], &rows),
        provenance(d)
    );
}

/// `headhunt ruler`: each task's score against length, its effective length and retrieval heads.
pub(super) fn ruler_section(d: &Path, here: &str, sections: &mut BTreeMap<&str, String>) {
    let masks = ruler_masks(d, here);
    if !masks.is_empty() {
        sections.entry("5 ruler").or_default().push_str(&masks);
    }
    let Some(r) = read_json(&d.join("ruler.json")) else { return };
    let lengths: Vec<u64> = r["average"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["length"].as_u64()).collect())
        .unwrap_or_default();
    let cells = |ls: &Value| -> Vec<String> {
        lengths
            .iter()
            .map(|l| {
                ls.as_array()
                    .and_then(|a| a.iter().find(|x| x["length"].as_u64() == Some(*l)))
                    .map_or_else(|| "-".into(), |x| format!("{:.1}", f(&x["score"])))
            })
            .collect()
    };
    let effective = |v: &Value| v.as_u64().map_or_else(|| "below the shortest".into(), |e| e.to_string());
    let mut rows = json_rows(&r["tasks"], |t| {
        let top: Vec<String> = t["top"]
            .as_array()
            .map(|a| {
                a.iter()
                    .take(5)
                    .map(|h| format!("{} ({:.2})", h[0].as_str().unwrap_or(""), f(&h[1])))
                    .collect()
            })
            .unwrap_or_default();
        let mut row = vec![t["task"].as_str().unwrap_or("").into(), t["group"].as_str().unwrap_or("").into()];
        row.extend(cells(&t["lengths"]));
        row.push(effective(&t["effective_length"]));
        row.push(t["retrieval_heads"].as_u64().map_or_else(|| "-".into(), |n| n.to_string()));
        row.push(top.join(", "));
        row
    });
    let mut mean = vec!["mean".to_owned(), String::new()];
    mean.extend(cells(&r["average"]));
    mean.push(effective(&r["effective_length"]));
    mean.extend([String::new(), String::new()]);
    rows.push(mean);
    let length_names: Vec<String> = lengths.iter().map(u64::to_string).collect();
    let mut headers = vec!["task", "group"];
    headers.extend(length_names.iter().map(String::as_str));
    headers.extend(["effective length", "heads > 0.1", "top heads"]);
    let shared: Vec<&str> = r["shared_heads"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let _ = write!(
        sections.entry("5 ruler").or_default(),
        r#"<div class="run"><h3>{} <small>{}</small></h3>{}{}<p>Effective length: the longest length before a score below {} (RULER's threshold). Heads above 0.1 in every task that copies its answer: {}.</p>{}{}</div>"#,
        esc(r["model"].as_str().unwrap_or("")),
        esc(here),
        inline_svg(&d.join("ruler.svg")).unwrap_or_default(),
        table(&headers, &rows),
        r["threshold"],
        esc(&if shared.is_empty() { "none".to_owned() } else { shared.join(", ") }),
        inline_svg(&d.join("ruler_heads.svg")).unwrap_or_default(),
        provenance(d)
    );
}

/// `headhunt ruler --mask-top K`: every task's score under each condition.
fn ruler_masks(d: &Path, here: &str) -> String {
    let Some(m) = read_json(&d.join("ruler_masks.json")) else {
        return String::new();
    };
    let conditions = m["conditions"].as_array().cloned().unwrap_or_default();
    let labels: Vec<String> = conditions
        .iter()
        .map(|c| c["condition"].as_str().unwrap_or("").to_owned())
        .collect();
    let tasks: Vec<String> = conditions
        .first()
        .and_then(|c| c["tasks"].as_array())
        .map(|a| a.iter().map(|t| t["task"].as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .enumerate()
        .map(|(i, task)| {
            let mut row = vec![task.clone()];
            row.extend(conditions.iter().map(|c| format!("{:.1}", f(&c["tasks"][i]["score"]))));
            row
        })
        .collect();
    let mut headers = vec!["task"];
    headers.extend(labels.iter().map(String::as_str));
    format!(
        r#"<div class="run"><h3>{} <small>{}</small></h3><p>Each task's RULER score (mean over lengths) with heads masked.</p>{}</div>"#,
        esc(m["model"].as_str().unwrap_or("")),
        esc(here),
        table(&headers, &rows)
    )
}

/// `headhunt rerank`: Recall@1, Recall@5 and nDCG@10 per method and number of documents.
pub(super) fn rerank_section(d: &Path, here: &str, sections: &mut BTreeMap<&str, String>) {
    let Some(r) = read_json(&d.join("rerank.json")) else { return };
    let rows = json_rows(&r["results"], |x| {
        vec![
            x["docs"].to_string(),
            x["method"].as_str().unwrap_or("").into(),
            x["queries"].to_string(),
            format!("{:.1}", f(&x["recall_at_1"])),
            format!("{:.1}", f(&x["recall_at_5"])),
            format!("{:.1}", f(&x["ndcg_at_10"])),
            x["seconds"].as_f64().map_or("-".into(), |s| format!("{s:.2}")),
        ]
    });
    let _ = write!(
        sections.entry("5 rerank").or_default(),
        r#"<div class="run"><h3>{} <small>{}</small></h3><p>Documents ranked by the attention the question pays them, less that of "N/A" (head sets of {}), against BM25.</p>{}{}{}</div>"#,
        esc(r["model"].as_str().unwrap_or("")),
        esc(here),
        r["heads"],
        inline_svg(&d.join("rerank.svg")).unwrap_or_default(),
        table(
            &[
                "documents",
                "method",
                "queries",
                "Recall@1",
                "Recall@5",
                "nDCG@10",
                "seconds per query"
            ],
            &rows
        ),
        provenance(d)
    );
}

/// `headhunt cot`: look-ups answered with written steps and directly, per condition.
pub(super) fn cot_section(d: &Path, here: &str, sections: &mut BTreeMap<&str, String>) {
    let Some(c) = read_json(&d.join("cot.json")) else { return };
    let rows = json_rows(&c["conditions"], |r| {
        vec![
            r["condition"].as_str().unwrap_or("").into(),
            r["masked_heads"].to_string(),
            r["problems"].to_string(),
            format!("{:.1}%", f(&r["steps_accuracy"])),
            format!("{:.1}%", f(&r["direct_accuracy"])),
            format!("{:.1}%", f(&r["steps_restated"])),
        ]
    });
    let _ = write!(
        sections.entry("5 reasoning").or_default(),
        r#"<div class="run"><h3>{} <small>{}</small></h3><p>{}-hop look-ups among {} chains. A prompt with steps:</p><pre>{}</pre>{}{}</div>"#,
        esc(c["model"].as_str().unwrap_or("")),
        esc(here),
        c["hops"],
        c["chains"],
        esc(c["example_prompt"].as_str().unwrap_or("")),
        table(
            &[
                "condition",
                "heads masked",
                "problems",
                "right with steps",
                "right directly",
                "steps restate the facts"
            ],
            &rows
        ),
        provenance(d)
    );
}

/// `headhunt claims`: the paper's claims, measured, with their verdicts and the activation plot.
pub(super) fn claims_section(d: &Path, here: &str, sections: &mut BTreeMap<&str, String>) {
    let Some(c) = read_json(&d.join("claims.json")) else { return };
    let rows = json_rows(&c["claims"], |r| {
        let commands: Vec<&str> = r["commands"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let verdict = match (r["verdict"].as_str().unwrap_or(""), r["reason"].as_str()) {
            (_, Some(why)) => format!("not measurable here: {why}"),
            (v, None) => v.replace('_', " "),
        };
        vec![
            r["claim"].as_str().unwrap_or("").into(),
            r["paper"].as_str().unwrap_or("").into(),
            r["measured"].as_str().unwrap_or("").into(),
            commands.join("\n"),
            format!("{verdict} ({})", r["rule"].as_str().unwrap_or("")),
        ]
    });
    let _ = write!(
        sections.entry("0 claims").or_default(),
        r#"<div class="run"><h3>{} <small>{}</small></h3><p>K = {} heads masked.</p>{}{}</div>"#,
        esc(c["model"].as_str().unwrap_or("")),
        esc(here),
        c["k"],
        table(&["claim", "the paper", "measured here", "command", "verdict (rule)"], &rows),
        inline_svg(&d.join("activation.svg")).unwrap_or_default()
    );
}

/// A decoding's share of hallucinated answers against greedy decoding's, with the interval of
/// the change ("-" for runs written before the rates were recorded).
fn hallucination_rates(h: &serde_json::Value, name: &str) -> String {
    if h.is_null() {
        return "-".into();
    }
    format!(
        "{:.1}% to {:.1}% [{:+.1}, {:+.1}]",
        f(&h["greedy"]),
        f(&h[name]),
        f(&h["ci95"][0]),
        f(&h["ci95"][1])
    )
}

/// `headhunt hallucination`: the detectors' AUROCs, their ROC curves, guided and contrastive
/// decoding, and
/// answers with each token shaded by how far the retrieval heads support it.
pub(super) fn hallucination_section(d: &Path, here: &str, sections: &mut BTreeMap<&str, String>) {
    let Some(h) = read_json(&d.join("hallucination.json")) else {
        return;
    };
    let rows = json_rows(&h["detections"], |r| {
        vec![
            r["detector"].as_str().unwrap_or("").into(),
            r["evaluated_on"].as_str().unwrap_or("").into(),
            r["answers"].to_string(),
            r["hallucinated"].to_string(),
            format!("{:.3} [{:.3}, {:.3}]", f(&r["auroc"]), f(&r["ci95"][0]), f(&r["ci95"][1])),
        ]
    });
    let decoding = |name: &str, title: &str| {
        let rows = json_rows(&h[name], |r| {
            vec![
                r["task"].as_str().unwrap_or("").into(),
                r["metric"].as_str().unwrap_or("").into(),
                r["items"].to_string(),
                format!("{:.1}", f(&r["greedy"])),
                format!("{:.1}", f(&r[name])),
                format!("{:+.1} [{:+.1}, {:+.1}]", f(&r["difference"]), f(&r["ci95"][0]), f(&r["ci95"][1])),
                hallucination_rates(&r["hallucinated"], name),
                r["seconds_over_greedy"].as_f64().map_or("-".into(), |x| format!("{x:.1}x")),
            ]
        });
        if rows.is_empty() {
            return String::new();
        }
        format!(
            "<h4>{title}</h4>{}",
            table(
                &[
                    "task",
                    "metric",
                    "items",
                    "greedy",
                    name,
                    "difference [95% CI]",
                    "hallucinated, greedy to this [95% CI of the change]",
                    "time against greedy"
                ],
                &rows
            )
        )
    };
    let guided = decoding("guided", "Decoding guided by the signal")
        + &decoding("contrastive", "Decoding contrasted with the retrieval heads masked (DeCoRe)");
    let _ = write!(
        sections.entry("5 things").or_default(),
        r#"<div class="run"><h3>{} <small>{}</small></h3><p>Complete: {}; hallucinated: {}.</p>{}{}{}<h4>Answers, each token shaded by its support</h4>{}{}</div>"#,
        esc(h["model"].as_str().unwrap_or("")),
        esc(here),
        esc(h["labels"]["complete"].as_str().unwrap_or("")),
        esc(h["labels"]["hallucinated"].as_str().unwrap_or("")),
        table(&["detector", "on", "answers", "hallucinated", "AUROC [95% CI]"], &rows),
        inline_svg(&d.join("roc.svg")).unwrap_or_default(),
        guided,
        shaded_answers(d),
        provenance(d)
    );
}

/// A few complete and hallucinated answers of a hallucination run, tokens shaded green by
/// support (white: no retrieval head copies it from the prompt).
fn shaded_answers(d: &Path) -> String {
    let mut out = String::new();
    for task in ["niah", "qa"] {
        let Ok(text) = std::fs::read_to_string(d.join(task).join("trials.jsonl")) else {
            continue;
        };
        let records: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        for outcome in ["complete", "hallucination"] {
            for r in records.iter().filter(|r| r["outcome"] == outcome).take(3) {
                let tokens: String = json_rows(&r["greedy"]["tokens"], |t| {
                    vec![t[0].as_str().unwrap_or("").to_owned(), format!("{:.2}", f(&t[1]))]
                })
                .iter()
                .map(|t| {
                    format!(
                        r#"<span title="support {}" style="background:rgba(44,160,44,{})">{}</span>"#,
                        t[1],
                        t[1],
                        esc(&t[0])
                    )
                })
                .collect();
                let _ = write!(
                    out,
                    r#"<div class="example {outcome}"><b>{outcome}</b> <small>{task}, support {:.2}</small><p>Q: {}<br>expected: <i>{}</i><br>model: {tokens}</p></div>"#,
                    f(&r["greedy"]["signal"]["support"]),
                    esc(r["question"].as_str().unwrap_or("")),
                    esc(&r["expected"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" / ")),
                );
            }
        }
    }
    out
}

/// `headhunt kv`: NIAH score against KV bytes with whole heads kept full.
pub(super) fn kv_section(d: &Path, here: &str, sections: &mut BTreeMap<&str, String>) {
    let Some(k) = read_json(&d.join("kv.json")) else { return };
    let rows = json_rows(&k["rows"], |r| {
        vec![
            r["budget"].to_string(),
            r["policy"].as_str().unwrap_or("").into(),
            format!("{:.1}", f(&r["score"])),
            format!("{:.1} MiB", f(&r["kv_bytes"]) / 1048576.0),
            format!("{:.1}%", 100.0 * f(&r["kv_fraction"])),
        ]
    });
    let _ = write!(
        sections.entry("7 kv").or_default(),
        r#"<div class="run"><h3>{} <small>{}</small></h3><p>Smallest budget keeping 95% of the full cache's score: <b>{}</b></p>{}{}{}</div>"#,
        esc(k["model"].as_str().unwrap_or("")),
        esc(here),
        k["smallest_budget_95"],
        inline_svg(&d.join("kv_budget.svg")).unwrap_or_default(),
        table(&["budget", "policy", "NIAH score", "KV bytes", "of full"], &rows),
        provenance(d)
    );
}

/// `headhunt kv-select`: NIAH score against KV bytes with positions selected per head.
pub(super) fn kv_select_section(d: &Path, here: &str, sections: &mut BTreeMap<&str, String>) {
    let Some(k) = read_json(&d.join("kv_select.json")) else { return };
    let rows = json_rows(&k["points"], |p| {
        vec![
            p["mode"].as_str().unwrap_or("").into(),
            p["policy"].as_str().unwrap_or("").into(),
            format!("{:.0}%", 100.0 * f(&p["budget"])),
            format!("{:.1} [{:.1}, {:.1}]", f(&p["score"]), f(&p["ci95"][0]), f(&p["ci95"][1])),
            format!("{:.0}%", 100.0 * f(&p["relative"])),
            format!("{:.1}%", 100.0 * f(&p["bytes_share"])),
        ]
    });
    let smallest: Vec<String> = k["smallest_95"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, b)| {
            format!(
                "{} {}",
                esc(name),
                b.as_f64().map_or("none".into(), |b| format!("{:.0}%", 100.0 * b))
            )
        })
        .collect();
    let _ = write!(
        sections.entry("7 kv").or_default(),
        r#"<div class="run"><h3>{} <small>{}</small></h3><p>Full cache: NIAH score {:.1} over {} trials. Smallest budget keeping 95% of it: {}</p>{}{}{}</div>"#,
        esc(k["model"].as_str().unwrap_or("")),
        esc(here),
        f(&k["full_score"]),
        k["trials"],
        smallest.join(", "),
        inline_svg(&d.join("kv_select.svg")).unwrap_or_default(),
        table(&["mode", "policy", "budget", "NIAH score [95% CI]", "of full", "KV bytes"], &rows),
        provenance(d)
    );
}

pub(super) fn recall_section(d: &Path, here: &str, sections: &mut BTreeMap<&str, String>) {
    let mut parts = String::new();
    if let Some(e) = read_json(&d.join("eval.json")) {
        let rows = json_rows(&e["results"], |r| {
            vec![
                r["condition"].as_str().unwrap_or("none").into(),
                r["task"].as_str().unwrap_or("").into(),
                r["shots"].to_string(),
                r["prompts"].to_string(),
                format!("{:.2}%", 100.0 * f(&r["p_correct"])),
                format!("{:.1}%", 100.0 * f(&r["accuracy"])),
            ]
        });
        let _ = write!(
            parts,
            "<h4>Answer probability</h4>{}",
            table(&["heads masked", "task", "shots", "prompts", "p(answer)", "accuracy"], &rows)
        );
    }
    if let Some(h) = read_json(&d.join("heads.json")) {
        let rows: Vec<Vec<String>> = h["heads"]
            .as_array()
            .into_iter()
            .flatten()
            .take(12)
            .map(|r| {
                vec![
                    r["head"].as_str().unwrap_or("").into(),
                    format!("{:.3}", f(&r["ablation_effect"])),
                    format!("{:.3}", f(&r["attention_to_subject"])),
                    format!("{:.3}", f(&r["dla_answer"])),
                    format!("{:.3}", f(&r["dla_subject"])),
                ]
            })
            .collect();
        let _ = write!(
            parts,
            "<h4>Mover heads on `{}` (Pearson r of attention to subject and DLA: {:.2})</h4>{}<div class=\"row\">{}{}</div>",
            esc(h["task"].as_str().unwrap_or("")),
            f(&h["pearson_attention_dla"]),
            table(
                &["head", "mean-ablation effect", "attention to subject", "DLA answer", "DLA subject"],
                &rows
            ),
            inline_svg(&d.join("heads.svg")).unwrap_or_default(),
            inline_svg(&d.join("heads_scatter.svg")).unwrap_or_default()
        );
    }
    let mut mlps: Vec<PathBuf> = std::fs::read_dir(d)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mlp_") && n.ends_with(".json"))
        })
        .collect();
    mlps.sort();
    for m in mlps.iter().filter_map(|p| read_json(p)) {
        let betas: Vec<String> = m["betas"]
            .as_array()
            .into_iter()
            .flatten()
            .take(6)
            .map(|b| format!("{} {:.2}", b["component"].as_str().unwrap_or(""), f(&b["beta"])))
            .collect();
        let tokens: Vec<String> = m["intercept_top_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .take(10)
            .map(|t| format!("{:?}", t["token"].as_str().unwrap_or("")))
            .collect();
        let _ = write!(
            parts,
            "<h4>MLP {} as Σ β c + b (R² {:.3}, {} prompts)</h4><p>largest β: {}<br>the intercept b favours: {}</p>",
            m["layer"],
            f(&m["r2"]),
            m["prompts"],
            esc(&betas.join(", ")),
            esc(&tokens.join(" "))
        );
    }
    if let Some(fl) = read_json(&d.join("final_layer.json")) {
        for t in fl["tasks"].as_array().into_iter().flatten() {
            let rows = json_rows(&t["conditions"], |c| {
                vec![
                    c["condition"].as_str().unwrap_or("").into(),
                    format!("{:.2}%", 100.0 * f(&c["p_correct"])),
                    format!("{:.1}%", 100.0 * f(&c["accuracy"])),
                ]
            });
            let pushes = json_rows(&t["components"], |c| {
                let toks: Vec<String> = c["pushes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(6)
                    .map(|p| format!("{:?}", p["token"].as_str().unwrap_or("")))
                    .collect();
                vec![
                    c["component"].as_str().unwrap_or("").into(),
                    format!("{:.3}", f(&c["dla_answer"])),
                    toks.join(" "),
                ]
            });
            let _ = write!(
                parts,
                "<h4>The final layer on `{}`</h4>{}{}",
                esc(t["task"].as_str().unwrap_or("")),
                table(&["", "p(answer)", "accuracy"], &rows),
                table(&["component", "DLA to the answer", "pushes up"], &pushes)
            );
        }
    }
    if let Some(mi) = read_json(&d.join("mitigate.json")) {
        let rows = json_rows(&mi["results"], |r| {
            vec![
                r["task"].as_str().unwrap_or("").into(),
                r["shots"].to_string(),
                r["condition"].as_str().unwrap_or("").into(),
                format!("{:.2}%", 100.0 * f(&r["p_correct"])),
                format!("{:.1}%", 100.0 * f(&r["accuracy"])),
            ]
        });
        let _ = write!(
            parts,
            "<h4>Mitigating the final layer</h4>{}",
            table(&["task", "shots", "condition", "p(answer)", "accuracy"], &rows)
        );
    }
    if !parts.is_empty() {
        let model = read_json(&d.join("model.json"))
            .and_then(|c| c["name"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = write!(
            sections.entry("6 recall").or_default(),
            r#"<div class="run"><h3>{} <small>{}</small></h3>{parts}{}</div>"#,
            esc(&model),
            esc(here),
            provenance(d)
        );
    }
}
