//! Writes the man pages and shell completions of `walrelay` from its clap definition
//! (`walrelay::cli::Cli`), for the Debian package (scripts/package):
//!
//! ```sh
//! cargo run --example gen-docs -- OUTDIR
//! ```
//!
//! gives `OUTDIR/man/walrelay.1` and one page per subcommand (`walrelay-run.1`, …), and
//! `OUTDIR/completions/walrelay.bash`, `_walrelay` (zsh) and `walrelay.fish`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: cargo run --example gen-docs -- OUTDIR");
        return ExitCode::from(2);
    };
    match generate(PathBuf::from(out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-docs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(out: PathBuf) -> std::io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;

    let cmd = walrelay::cli::Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let mut cmd = cmd;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "walrelay", &completions)?;
    }
    for dir in [&man, &completions] {
        let mut names: Vec<_> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            println!("{}", n.display());
        }
    }
    Ok(())
}
