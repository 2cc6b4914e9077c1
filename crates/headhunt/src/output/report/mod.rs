//! One self-contained HTML report of every headhunt run under a folder: the model card, the
//! retrieval-head heatmap (values on hover), the top heads, NIAH heatmaps per masking condition
//! side by side, the K sweep, failure examples with where the heads looked, factual-recall
//! tables and plots, the KV budget curve, and the command lines and versions behind each part.
//! Nothing is loaded from the network: figures are inline SVG, the little script inline.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use plotters::style::colors::colormaps::ViridisRGB;
use serde_json::Value;

use crate::experiments::retrieval::HeadScores;

mod experiments;
use experiments::{
    claims_section, cot_section, hallucination_section, kv_section, kv_select_section, qa_section, recall_section, rerank_section,
    ruler_section,
};

pub const REPORT_FILE: &str = "report.html";

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Every folder below `dir` (and `dir` itself) to `depth` levels, depth-first, in name order,
/// links not followed; a merged run's shards left out (the merged run stands for them).
pub(crate) fn folders(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut subs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    subs.sort();
    // A merged run stands for its shards.
    let merged = dir.join(crate::runner::store::SETTINGS_FILE).exists();
    subs.retain(|s| !(merged && s.file_name().is_some_and(|n| n == crate::runner::shard::SHARDS_DIR)));
    for s in subs {
        folders(&s, depth - 1, out);
    }
}

fn rel(dir: &Path, root: &Path) -> String {
    let r = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
    if r.is_empty() {
        ".".into()
    } else {
        r
    }
}

fn hex(v: f64, lo: f64, hi: f64) -> String {
    let t = if hi > lo { ((v - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.0 };
    let c = ViridisRGB::get_color(t as f32);
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// An interactive heatmap: every cell a `rect.cell` with its value in `data-value` and a
/// tooltip; a colour bar beside it.
#[allow(clippy::too_many_arguments)]
fn heatmap(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_ticks: &[String],
    y_ticks: &[String],
    values: &[f64],
    range: (f64, f64),
    unit: &str,
) -> String {
    let (cols, rows) = (x_ticks.len(), y_ticks.len());
    let cw = (420 / cols.max(1)).clamp(14, 56);
    let ch = (520 / rows.max(1)).clamp(10, 40);
    let (left, top) = (64, 36);
    let (w, h) = (left + cols * cw + 110, top + rows * ch + 56);
    let mut s = format!(
        r#"<figure class="figure"><svg class="heatmap" id="{id}" data-rows="{rows}" data-cols="{cols}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{t}"><text x="{x}" y="20" class="title">{t}</text>"#,
        t = esc(title),
        x = left
    );
    for r in 0..rows {
        for c in 0..cols {
            let v = values[r * cols + c];
            let label = format!("{} {}, {} {}: {} {}", y_label, y_ticks[r], x_label, x_ticks[c], fmt(v), unit);
            let _ = write!(
                s,
                r#"<rect class="cell" x="{}" y="{}" width="{cw}" height="{ch}" fill="{}" data-value="{v}" data-label="{}"><title>{}</title></rect>"#,
                left + c * cw,
                top + r * ch,
                hex(v, range.0, range.1),
                esc(&label),
                esc(&label)
            );
        }
    }
    let every = |n: usize, room: usize| n.div_ceil(room.max(1)).max(1);
    for (c, t) in x_ticks.iter().enumerate().filter(|(c, _)| c % every(cols, 16) == 0) {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
            left + c * cw + cw / 2,
            top + rows * ch + 16,
            esc(t)
        );
    }
    for (r, t) in y_ticks.iter().enumerate().filter(|(r, _)| r % every(rows, 32) == 0) {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" class="tick" text-anchor="end">{}</text>"#,
            left - 6,
            top + r * ch + ch / 2 + 4,
            esc(t)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text><text transform="translate(16 {}) rotate(-90)" class="axis" text-anchor="middle">{}</text>"#,
        left + cols * cw / 2,
        top + rows * ch + 40,
        esc(x_label),
        top + rows * ch / 2,
        esc(y_label)
    );
    // Colour bar.
    let (bx, bh) = (left + cols * cw + 24, rows * ch);
    for i in 0..50 {
        let v = range.1 - (range.1 - range.0) * i as f64 / 50.0;
        let _ = write!(
            s,
            r#"<rect x="{bx}" y="{}" width="16" height="{}" fill="{}"/>"#,
            top + i * bh / 50,
            bh / 50 + 1,
            hex(v, range.0, range.1)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" class="tick">{}</text><text x="{}" y="{}" class="tick">{}</text><text x="{}" y="{}" class="tick">{}</text></svg></figure>"#,
        bx + 20,
        top + 10,
        fmt(range.1),
        bx + 20,
        top + bh,
        fmt(range.0),
        bx - 4,
        top - 6,
        esc(unit)
    );
    s
}

/// A table's rows, one per element of a JSON array (none when it is not one).
fn json_rows(list: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array().into_iter().flatten().map(row).collect()
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in headers {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", esc(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// A figure written by `plot` (an SVG file), inlined.
fn inline_svg(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let start = text.find("<svg")?;
    Some(format!(r#"<figure class="figure">{}</figure>"#, &text[start..]))
}

fn provenance(dir: &Path) -> String {
    let Some(Value::Array(list)) = read_json(&dir.join("provenance.json")) else {
        return String::new();
    };
    let rows: Vec<String> = list
        .iter()
        .map(|p| {
            let hub = p["hub"].as_str().map(|h| format!(", from the Hub: {}", esc(h))).unwrap_or_default();
            format!(
                "<li><code>{}</code> (headhunt {}, precision {}{hub})</li>",
                esc(p["command"].as_str().unwrap_or("")),
                esc(p["headhunt"].as_str().unwrap_or("")),
                esc(p["precision"].as_str().unwrap_or("exact"))
            )
        })
        .collect();
    format!(
        r#"<details class="provenance"><summary>made by</summary><ul>{}</ul></details>"#,
        rows.join("")
    )
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Mean ROUGE-1 per (depth, length) cell of a NIAH run folder.
fn niah_cells(dir: &Path, settings: &Value) -> Option<(Vec<String>, Vec<String>, Vec<f64>)> {
    let lengths: Vec<u64> = settings["lengths"].as_array()?.iter().filter_map(Value::as_u64).collect();
    let depths: Vec<f64> = settings["depths"].as_array()?.iter().filter_map(Value::as_f64).collect();
    let (nl, nd) = (lengths.len(), depths.len());
    let (mut sum, mut n) = (vec![0.0; nl * nd], vec![0usize; nl * nd]);
    let text = std::fs::read_to_string(dir.join("trials.jsonl")).ok()?;
    for line in text.lines() {
        let Ok(r) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(li), Some(di)) = (
            lengths.iter().position(|&l| Some(l) == r["length"].as_u64()),
            depths.iter().position(|&d| Some(d) == r["depth"].as_f64()),
        ) else {
            continue;
        };
        sum[di * nl + li] += f(&r["rouge1"]);
        n[di * nl + li] += 1;
    }
    Some((
        lengths.iter().map(|l| l.to_string()).collect(),
        depths.iter().map(|d| format!("{d}")).collect(),
        sum.iter().zip(&n).map(|(s, &k)| if k == 0 { 0.0 } else { s / k as f64 }).collect(),
    ))
}

/// Build the report of everything under `dir` and write it to `dir/report.html`.
pub fn write(dir: &Path) -> Result<PathBuf> {
    let html = render(dir)?;
    let path = dir.join(REPORT_FILE);
    crate::runner::store::write_atomic(&path, html)?;
    Ok(path)
}

pub fn render(root: &Path) -> Result<String> {
    let mut dirs = Vec::new();
    folders(root, 4, &mut dirs);
    let mut body = String::new();
    let mut cards: BTreeMap<String, Value> = BTreeMap::new();
    let mut sections: BTreeMap<&str, String> = BTreeMap::new();
    let mut niah_panels: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut failures = String::new();
    for d in &dirs {
        if let Some(card) = read_json(&d.join("model.json")) {
            let name = card["name"].as_str().unwrap_or("model").to_owned();
            cards.entry(name).or_insert(card);
        }
        let settings = read_json(&d.join("run.json"));
        let command = settings.as_ref().and_then(|s| s["command"].as_str().map(str::to_owned));
        let here = rel(d, root);
        // Retrieval heads.
        if command.as_deref() == Some("detect") {
            if let (Some(summary), Ok(scores)) = (read_json(&d.join("summary.json")), HeadScores::load(&d.join("head_scores.json"))) {
                let s = &summary["summary"];
                let means = scores.means();
                let hi = means.iter().copied().fold(0.1f64, f64::max);
                let qr = summary["detector"] == "qrhead";
                let map = heatmap(
                    &format!("retrieval-heatmap-{}", sections.len()),
                    &if qr {
                        format!("QRHead scores ({} trials)", scores.trials())
                    } else {
                        format!("Retrieval scores ({} answered trials)", scores.trials())
                    },
                    "head",
                    "layer",
                    &(0..scores.n_heads).map(|h| h.to_string()).collect::<Vec<_>>(),
                    &(0..scores.n_layers).map(|l| l.to_string()).collect::<Vec<_>>(),
                    &means,
                    (0.0, hi),
                    "mean score",
                );
                let rows: Vec<Vec<String>> = s["ranking"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .take(20)
                            .enumerate()
                            .map(|(i, h)| {
                                vec![
                                    (i + 1).to_string(),
                                    h["head"].as_str().unwrap_or("").into(),
                                    format!("{:.3}", f(&h["mean"])),
                                    format!("{:.0}%", 100.0 * f(&h["active_share"])),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let entry = sections.entry("1 retrieval").or_default();
                let lede = if qr {
                    format!(
                        "QRHead (query-focused retrieval heads): the attention the question pays the needle, less that with \"N/A\" asked, over {} trials (every trial counts).",
                        summary["trials"]
                    )
                } else {
                    format!(
                        "{} trials, {} answered (mean ROUGE-1 recall {:.1}); <b>{} of {} heads ({:.1}%)</b> score above {}.",
                        summary["trials"],
                        summary["answered"],
                        f(&summary["mean_rouge1"]),
                        s["retrieval_heads"],
                        s["heads"],
                        100.0 * f(&s["fraction_above_threshold"]),
                        s["threshold"]
                    )
                };
                let _ = write!(
                    entry,
                    r#"<div class="run"><h3>{} <small>{}</small></h3><p>{lede}</p><div class="row">{map}<div>{}</div></div>{}</div>"#,
                    esc(summary["model"].as_str().unwrap_or("")),
                    esc(&here),
                    table(&["rank", "head", "mean score", "active (>0.5)"], &rows),
                    provenance(d)
                );
            }
        }
        // NIAH conditions: heatmaps grouped by the folder that holds them.
        let qrhead = settings.as_ref().is_some_and(|s| s["detector"] == "qrhead");
        if matches!(command.as_deref(), Some("niah" | "detect")) && !qrhead {
            if let (Some(summary), Some((xt, yt, vals))) =
                (read_json(&d.join("summary.json")), settings.as_ref().and_then(|s| niah_cells(d, s)))
            {
                let label = d.file_name().and_then(|n| n.to_str()).unwrap_or("run").to_owned();
                // A detection run is the unmasked grid; its summary keeps the mean elsewhere.
                let mean = if command.as_deref() == Some("detect") {
                    f(&summary["mean_rouge1"])
                } else {
                    f(&summary["mean_rouge"])
                };
                let group = d.parent().map(|p| rel(p, root)).unwrap_or_default();
                let panel = heatmap(
                    &format!("niah-{}-{}", group.replace(['/', '.'], "-"), label),
                    &format!("{label}: ROUGE-1 {mean:.1}"),
                    "context length",
                    "depth %",
                    &xt,
                    &yt,
                    &vals,
                    (0.0, 100.0),
                    "ROUGE-1",
                );
                niah_panels.entry(group).or_default().push(panel);
                if let Some(Value::Object(classes)) = read_json(&d.join("failures.json")) {
                    for (class, examples) in classes.iter().filter(|(c, _)| c.as_str() != "complete") {
                        for e in examples.as_array().into_iter().flatten().take(2) {
                            let ev = &e["evidence"];
                            let looked = if ev.is_null() {
                                "no scores given".to_owned()
                            } else {
                                format!(
                                    "needle {:.0}%, first tokens {:.0}%, elsewhere {:.0}%",
                                    100.0 * f(&ev["needle"]),
                                    100.0 * f(&ev["first_tokens"]),
                                    100.0 * f(&ev["elsewhere"])
                                )
                            };
                            let _ = write!(
                                failures,
                                r#"<div class="example {class}"><b>{class}</b> <small>{} ({} tokens, depth {}%)</small><p>Q: {}<br>needle answer: <i>{}</i><br>model: <i>{}</i> (ROUGE-1 {:.0})<br>strongest unmasked retrieval heads looked at: {looked}</p></div>"#,
                                esc(&here),
                                e["length"],
                                e["depth"],
                                esc(e["question"].as_str().unwrap_or("")),
                                esc(e["real_needle"].as_str().unwrap_or("")),
                                esc(e["answer"].as_str().unwrap_or("")),
                                f(&e["rouge1"])
                            );
                        }
                    }
                }
            }
        }
        if let Some(a) = read_json(&d.join("ablation.json")) {
            let versus = !a["versus"].is_null();
            let rows = json_rows(&a["sweep"], |r| {
                let mut row = vec![r["k"].to_string(), format!("{:.1}", f(&r["top"]))];
                if versus {
                    row.push(format!("{:.1}", f(&r["versus_top"])));
                }
                row.extend([format!(
                    "{:.1} ± {:.1} [{:.1}, {:.1}]",
                    f(&r["random_mean"]),
                    f(&r["random_std"]),
                    f(&r["random_min"]),
                    f(&r["random_max"])
                )]);
                row
            });
            let versus_header = format!("top-K of {} masked", a["versus"].as_str().unwrap_or(""));
            let mut headers = vec!["K", "top-K masked"];
            if versus {
                headers.push(&versus_header);
            }
            headers.push("K random masked: mean ± sd [min, max]");
            let _ = write!(
                sections.entry("3 ablation").or_default(),
                r#"<div class="run"><h3>{} <small>{}</small></h3>{}{}{}</div>"#,
                esc(a["model"].as_str().unwrap_or("")),
                esc(&here),
                inline_svg(&d.join("ablation.svg")).unwrap_or_default(),
                table(&headers, &rows),
                provenance(d)
            );
        }
        qa_section(d, &here, &mut sections);
        ruler_section(d, &here, &mut sections);
        rerank_section(d, &here, &mut sections);
        cot_section(d, &here, &mut sections);
        claims_section(d, &here, &mut sections);
        hallucination_section(d, &here, &mut sections);
        recall_section(d, &here, &mut sections);
        kv_section(d, &here, &mut sections);
        kv_select_section(d, &here, &mut sections);
    }
    for (group, panels) in &niah_panels {
        let _ = write!(
            sections.entry("2 niah").or_default(),
            r#"<div class="run"><h3><small>{}</small></h3><div class="row">{}</div></div>"#,
            esc(group),
            panels.join("")
        );
    }
    if !failures.is_empty() {
        sections.insert("4 failures", failures);
    }

    let titles = [
        ("0 claims", "Claims of the retrieval-head paper"),
        ("1 retrieval", "Retrieval heads"),
        ("2 niah", "Needle in a haystack, per condition"),
        ("3 ablation", "Masking retrieval heads against random heads"),
        ("4 failures", "How answers fail"),
        ("5 qa", "Extractive question answering"),
        ("5 ruler", "RULER's synthetic tasks"),
        ("5 rerank", "Re-ranking documents by attention"),
        ("5 reasoning", "Chain-of-thought look-ups"),
        ("5 things", "Retrieval heads against hallucination"),
        ("6 recall", "Factual recall"),
        ("7 kv", "Retrieval-aware KV cache"),
    ];
    let _ = write!(
        body,
        "<h1>headhunt report</h1><p class=\"lede\">{}</p>",
        esc(&root.display().to_string())
    );
    for (name, card) in &cards {
        let rows: Vec<Vec<String>> = card
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| vec![k.clone(), v.as_str().unwrap_or("").to_owned()])
            .collect();
        let _ = write!(
            body,
            r#"<section class="card"><h2>Model: {}</h2>{}</section>"#,
            esc(name),
            table(&["", ""], &rows)
        );
    }
    if sections.is_empty() {
        body.push_str("<p>No headhunt runs were found in this folder.</p>");
    }
    for (key, title) in titles {
        if let Some(content) = sections.get(key) {
            let _ = write!(
                body,
                r#"<section id="{}"><h2>{title}</h2>{content}</section>"#,
                key.split(' ').nth(1).unwrap_or(key)
            );
        }
    }
    Ok(format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>headhunt report</title><style>{CSS}</style></head><body>{body}<div id="tooltip" hidden></div><script>{SCRIPT}</script></body></html>"#
    ))
}

const CSS: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1300px;padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{margin-bottom:0}.lede{color:#666;margin-top:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.5rem}
h3 small,h2 small{color:#888;font-weight:normal;font-size:.8em}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}th,td{border-bottom:1px solid #e5e5e5;padding:.25rem .7rem;text-align:left}
th{background:#f6f6f6}.row{display:flex;flex-wrap:wrap;gap:1.2rem;align-items:flex-start}
.figure{margin:0}.heatmap .title{font-size:14px;font-weight:600}.heatmap .tick{font-size:11px;fill:#333}.heatmap .axis{font-size:12px;fill:#333}
.heatmap rect.cell:hover{stroke:#000;stroke-width:1.5}
#tooltip{position:fixed;pointer-events:none;background:#222;color:#fff;padding:.25rem .5rem;border-radius:4px;font-size:.85rem;z-index:10}
.example{border-left:4px solid #ccc;padding:.2rem .8rem;margin:.6rem 0}.example.hallucination{border-color:#d62728}.example.incomplete{border-color:#ff7f0e}
.provenance{color:#555;font-size:.85rem}code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}
svg{max-width:100%;height:auto}td{white-space:pre-line}pre{white-space:pre-wrap;background:#f6f6f6;padding:.5rem;font-size:.85rem}
"#;

/// Shows a cell's value beside the pointer.
const SCRIPT: &str = r#"
(function () {
  var tip = document.getElementById('tooltip');
  document.querySelectorAll('svg.heatmap rect.cell').forEach(function (cell) {
    cell.addEventListener('mousemove', function (e) {
      tip.textContent = cell.getAttribute('data-label');
      tip.style.left = (e.clientX + 14) + 'px';
      tip.style.top = (e.clientY + 14) + 'px';
      tip.hidden = false;
    });
    cell.addEventListener('mouseleave', function () { tip.hidden = true; });
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmaps_have_one_cell_per_value() {
        let svg = heatmap(
            "h",
            "t <x>",
            "head",
            "layer",
            &["0".into(), "1".into()],
            &["0".into(), "1".into(), "2".into()],
            &[0.0, 0.5, 1.0, 0.2, 0.3, 0.9],
            (0.0, 1.0),
            "score",
        );
        assert_eq!(svg.matches(r#"<rect class="cell""#).count(), 6);
        assert!(svg.contains("data-rows=\"3\" data-cols=\"2\"") && svg.contains("t &lt;x&gt;"));
    }

    #[test]
    fn an_empty_folder_gives_a_page_that_says_so() {
        let dir = std::env::temp_dir().join(format!("hh-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let html = render(&dir).unwrap();
        assert!(html.contains("No headhunt runs"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
