//! The server's pages: plain HTML with the data a page's script needs as JSON in the page.

use std::path::Path;

use serde_json::{json, Value};

use super::http::percent_encode;
use super::runs::{describe, read_json, read_records, RunsDir};
use crate::experiments::retrieval::niah::trial::TrialRecord;
use crate::experiments::retrieval::{HeadScores, RETRIEVAL_THRESHOLD};
use crate::runner::store::SETTINGS_FILE;

pub const APP_JS: &str = include_str!("app.js");
pub const APP_CSS: &str = include_str!("app.css");

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A page: its title, a body, and data for its script (`<script type="application/json">`,
/// with `</` escaped so that no string in it can end the element).
fn page(title: &str, kind: &str, body: &str, data: &Value) -> String {
    let data = data.to_string().replace("</", "<\\/");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} - headhunt</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\
         <body data-page=\"{kind}\"><header><a href=\"/\">headhunt</a> <span class=\"crumb\">{t}</span></header>\
         <main>{body}</main><script type=\"application/json\" id=\"data\">{data}</script>\
         <script src=\"/static/app.js\"></script></body></html>",
        t = esc(title)
    )
}

fn run_link(name: &str) -> String {
    format!("/run?run={}", percent_encode(name))
}

/// Every run under the folder, its status read live.
pub fn runs_page(runs: &RunsDir, model: &str) -> String {
    let list: Vec<Value> = runs.runs().iter().map(|d| describe(runs, d)).collect();
    let rows: String = list
        .iter()
        .map(|r| {
            let name = r["path"].as_str().unwrap_or("");
            let planned = r["trials_planned"].as_u64().map_or("?".into(), |p| p.to_string());
            let report = if r["report"].as_bool() == Some(true) {
                format!("<a href=\"/files/{}/report.html\">report</a>", percent_encode(name))
            } else {
                String::new()
            };
            format!(
                "<tr data-run=\"{n}\"><td><a href=\"{link}\">{n}</a></td><td>{c}</td><td>{m}</td>\
                 <td class=\"progress\">{d} / {planned}</td><td class=\"status {s}\">{s}</td><td>{report}</td></tr>",
                n = esc(name),
                link = esc(&run_link(name)),
                c = esc(r["command"].as_str().unwrap_or("")),
                m = esc(r["model"].as_str().unwrap_or("")),
                d = r["trials_done"],
                s = esc(r["status"].as_str().unwrap_or("")),
            )
        })
        .collect();
    let body = format!(
        "<h1>Runs in {}</h1><p class=\"note\">The server runs <b>{}</b>: trials of its runs can be opened, \
         their attention recomputed and their answers rerun with heads masked. Status is read from the folders \
         every few seconds.</p><table id=\"runs\"><thead><tr><th>run</th><th>command</th><th>model</th>\
         <th>trials</th><th>status</th><th></th></tr></thead><tbody>{rows}</tbody></table>{empty}",
        esc(&runs.root().display().to_string()),
        esc(model),
        empty = if list.is_empty() {
            "<p>No runs here yet: `headhunt detect` writes one.</p>"
        } else {
            ""
        }
    );
    page("runs", "runs", &body, &json!({}))
}

/// A run: its trials (for NIAH runs) and its heads, and any ablation that masked its heads.
pub fn run_page(runs: &RunsDir, dir: &Path) -> String {
    let name = runs.name(dir);
    let info = describe(runs, dir);
    let settings = read_json(&dir.join(SETTINGS_FILE)).unwrap_or(Value::Null);
    let mut body = format!(
        "<h1>{}</h1><p>{} of {}, {} trials, {}.{}</p>",
        esc(&name),
        esc(info["command"].as_str().unwrap_or("")),
        esc(info["model"].as_str().unwrap_or("")),
        info["trials_done"],
        esc(info["status"].as_str().unwrap_or("")),
        if info["report"].as_bool() == Some(true) {
            format!(" <a href=\"/files/{}/report.html\">Report</a>.", percent_encode(&name))
        } else {
            String::new()
        }
    );
    if let Some(masked) = settings["condition"]["masked_heads"].as_array().filter(|a| !a.is_empty()) {
        let list: Vec<&str> = masked.iter().filter_map(Value::as_str).collect();
        body.push_str(&format!("<p>Masked: {}.</p>", esc(&list.join(", "))));
    }
    let scores = HeadScores::load(&dir.join("head_scores.json")).ok();
    let mut data = json!({"run": name});
    if let Some(s) = &scores {
        body.push_str(
            "<h2>Heads</h2><p class=\"note\">Mean retrieval score per head (layers down, heads across); \
             click a head for its scores across trials.</p><div class=\"split\"><div id=\"headmap\"></div>\
             <div id=\"head-detail\" class=\"panel\">Click a head.</div></div>",
        );
        data["n_layers"] = json!(s.n_layers);
        data["n_heads"] = json!(s.n_heads);
        data["means"] = json!(s.means());
        data["per_trial"] = json!(s.scores);
        data["threshold"] = json!(RETRIEVAL_THRESHOLD);
        data["ablations"] = json!(ablations_of(runs, dir));
    }
    if super::runs::is_niah(&settings) {
        let records: Vec<TrialRecord> = read_records(dir);
        let rows: String = records
            .iter()
            .map(|r| {
                let key = r.spec.key();
                format!(
                    "<tr><td><a href=\"/trial?run={}&amp;trial={}\">{}</a></td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
                    percent_encode(&name),
                    percent_encode(&key),
                    esc(&key),
                    r.prompt_tokens,
                    r.spec.depth,
                    r.rouge1,
                    esc(&r.answer)
                )
            })
            .collect();
        body.push_str(&format!(
            "<h2>Trials</h2><table id=\"trials\"><thead><tr><th>trial</th><th>prompt tokens</th><th>depth %</th>\
             <th>ROUGE-1</th><th>answer</th></tr></thead><tbody>{rows}</tbody></table>"
        ));
    }
    page(&name, "run", &body, &data)
}

/// The K sweeps of ablation folders that took their heads from this run's scores.
fn ablations_of(runs: &RunsDir, dir: &Path) -> Vec<Value> {
    runs.runs()
        .iter()
        .filter_map(|d| {
            let a = read_json(&d.join("ablation.json"))?;
            let from = Path::new(a["scores"].as_str()?);
            let same = from
                .canonicalize()
                .ok()
                .is_some_and(|p| p == dir || p == dir.join("head_scores.json"));
            same.then(|| json!({"run": runs.name(d), "sweep": a["sweep"]}))
        })
        .collect()
}

/// One trial; its script loads the prompt and answer from `/api/trial`.
pub fn trial_page(runs: &RunsDir, dir: &Path, trial: &str) -> String {
    let name = runs.name(dir);
    let body = format!(
        "<h1>Trial {t} <small>of <a href=\"{link}\">{n}</a></small></h1>\
         <div id=\"summary\" class=\"panel\">Loading the trial (its prompt is rebuilt from the run's settings)...</div>\
         <h2>Answer</h2><p class=\"note\">Click a token: the heads whose attention argmax sat on the same token in the prompt \
         when it was chosen.</p><div id=\"answer\" class=\"answer\"></div>\
         <div id=\"copying\" class=\"panel\"></div>\
         <h2>Attention</h2><p class=\"note\">Click a head above or on the map: its attention over the whole prompt at the chosen \
         step, recomputed by the engine; the strip is the prompt end to end, the ticks its argmax at every step.</p>\
         <p><label>any head <input id=\"show-head\" placeholder=\"14-3\" size=\"6\"></label> \
         <button type=\"button\" id=\"show-head-go\">show</button></p><div id=\"strip-label\" class=\"note\"></div><canvas id=\"strip\" height=\"56\"></canvas>\
         <div id=\"prompt\" class=\"prompt\"></div>\
         <h2>Intervene</h2><div class=\"split\"><div><div id=\"headmap\"></div><p class=\"note\">Click heads to choose them.</p></div>\
         <form id=\"intervene\" class=\"panel\"><label>heads <input id=\"mask-heads\" name=\"heads\" placeholder=\"14-3,19-5\" size=\"32\"></label>\
         <label>K <input id=\"mask-k\" type=\"number\" min=\"1\" value=\"5\" size=\"4\"></label>\
         <label>mode <select id=\"mask-mode\"><option>uniform</option><option>zero</option><option>mean</option></select></label>\
         <label>phase <select id=\"mask-phase\"><option>all</option><option>decode</option></select></label>\
         <div class=\"buttons\"><button type=\"button\" id=\"mask-chosen\">mask the chosen heads</button>\
         <button type=\"button\" id=\"mask-top\">mask the top K</button><button type=\"button\" id=\"mask-random\">mask K random</button></div>\
         <div id=\"rerun-state\" class=\"note\"></div><table class=\"rerun\"><tr><th></th><th>answer</th><th>ROUGE-1</th><th>support</th></tr>\
         <tr><td>original</td><td id=\"original-answer\"></td><td id=\"original-rouge\"></td><td id=\"original-support\"></td></tr>\
         <tr><td>masked</td><td id=\"rerun-answer\"></td><td id=\"rerun-rouge\"></td><td id=\"rerun-support\"></td></tr></table></form></div>",
        t = esc(trial),
        n = esc(&name),
        link = esc(&run_link(&name)),
    );
    page(&format!("trial {trial}"), "trial", &body, &json!({"run": name, "trial": trial}))
}
