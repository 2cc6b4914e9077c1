//! `headhunt serve`: the runs in a browser, and a model to look inside them with.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;

use super::ModelArg;
use crate::serve::{Config, Server};

/// Explore runs in the browser and intervene live: every run under RUNS_DIR with its status
/// (read live from the folders) and report; a NIAH trial's prompt and answer token by token, the
/// heads that copied each answer token, a head's attention over the whole prompt at any step
/// (recomputed by the engine on demand) with its argmax path; the score map; and the trial rerun
/// with chosen heads masked (clicked, top-K or random-K), its answer streamed beside the
/// original with ROUGE-1 and retrieval-head support.
///
/// The model (--model, the runs' own) loads once; attention and reruns wait their turn for the
/// CPU, and pages say their place in line. Binds 127.0.0.1 by default; with --host beyond the
/// loopback every request must carry the token printed at start. Nothing under RUNS_DIR is ever
/// written, and nothing outside it is served.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The folder of runs to serve.
    #[arg(default_value = "runs")]
    pub runs: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
    /// The address to listen on. Anything but a loopback address requires the printed token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The port (0: any free one).
    #[arg(long, default_value_t = 8470)]
    pub port: u16,
}

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let server = Server::start(
        Config {
            runs: args.runs,
            host: args.host,
            port: args.port,
        },
        model,
    )?;
    println!("serving on {}", server.url());
    if server.token.is_some() {
        println!("(bound beyond the loopback: every request needs the token above)");
    }
    println!("press Ctrl-C to stop");
    server.wait();
    Ok(())
}
