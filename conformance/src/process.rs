//! A tiny runner for backend tests that spawn their own test binary as
//! child processes (several writers on one file, a writer killed with
//! SIGKILL). Such a test file sets `harness = false` and calls [`main`].

use std::process::ExitCode;

/// A named test returning its failure.
pub type Test = (&'static str, fn() -> anyhow::Result<()>);

/// Dispatches: with first argument `child`, runs `child` on the remaining
/// arguments (the process is a writer the tests spawned); otherwise runs
/// `tests` (those whose name contains the first non-flag argument, if any),
/// printing `test NAME ... ok|FAILED` and a closing `N passed, N failed`.
pub fn main(child: fn(&[String]) -> anyhow::Result<()>, tests: &[Test]) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return match child(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("child failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        match test() {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED\n    {e:#}");
                failed += 1;
            }
        }
    }
    println!("\nprocesses: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
