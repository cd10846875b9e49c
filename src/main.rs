use std::process::ExitCode;

use clap::Parser;
use polyface::cli::{Cli, Command, RunArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    match run(cli.command.unwrap_or(Command::Run(RunArgs::default()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: what failed and, through the error chain, why.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => polyface::app::run(args),
        Command::Track(args) => {
            let summary = polyface::headless::track(
                &args.input.spec(),
                &args.input.options(false),
                &args.out,
                args.max_frames,
            )?;
            println!(
                "{} frames -> {} ({} warnings)",
                summary.frames,
                args.out.display(),
                summary.warnings.len()
            );
            Ok(())
        }
        Command::Cameras => {
            let cameras = polyface::capture::list_cameras()?;
            if cameras.is_empty() {
                println!("no cameras found");
            }
            for camera in cameras {
                println!("{}\t{}\t{}", camera.index, camera.name, camera.description);
            }
            Ok(())
        }
    }
}
