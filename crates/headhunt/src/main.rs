//! `headhunt`: find, test and use the attention heads that carry facts through language models.

use clap::Parser;
use headhunt::cli::{self, Cli};

fn main() {
    if let Err(e) = cli::run(Cli::parse()) {
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
