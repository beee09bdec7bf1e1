//! The `eventuate` binary: see [`eventuate_cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = eventuate_cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match runtime.block_on(eventuate_cli::run(cli, &mut out)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `eventuate ... | head`: the reader went away with what it wanted.
        Err(e) if eventuate_cli::is_broken_pipe(&*e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The store's errors already say what caused them.
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
