//! pneumo-node. Only the `preprocess` subcommand lives on this branch; the
//! full CLI (serve, check-config, echo, store, infer, model) is wired in main.

mod cmd_preprocess;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pneumo-node",
    version,
    about = "DICOM node running a pneumoconiosis classifier"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the model input tensor of one DICOM file (.npy) and a JSON report.
    Preprocess(cmd_preprocess::PreprocessArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Preprocess(args) => cmd_preprocess::run(&args),
    }
}
