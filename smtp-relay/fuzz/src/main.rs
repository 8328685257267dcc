//! Bounded fuzzing of the command parser, address parser, DATA decoder and the
//! removal of forged Authentication-Results
//! (see the library of this crate). `cargo xtask fuzz` runs this in release
//! mode.
//!
//! usage: fuzz [--secs N] [--seed S] [--target command|address|data|strip]
//! Exits 1 with the failing input (escaped) on the first failure.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use smtp_relay_fuzz::{self as fuzz, Target};

fn main() -> ExitCode {
    let mut secs = 30u64;
    let mut seed = 0x5EED_u64;
    let mut targets: Vec<Target> = Target::ALL.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        let parsed = match (a.as_str(), value.as_deref()) {
            ("--secs", Some(v)) => v.parse().map(|v| secs = v).is_ok(),
            ("--seed", Some(v)) => v.parse().map(|v| seed = v).is_ok(),
            ("--target", Some(v)) => Target::from_name(v).map(|t| targets = vec![t]).is_some(),
            _ => false,
        };
        if !parsed {
            eprintln!("usage: fuzz [--secs N] [--seed S] [--target command|address|data|strip]");
            return ExitCode::from(2);
        }
    }
    let per_target = Duration::from_secs(secs) / targets.len() as u32;
    for target in targets {
        let started = Instant::now();
        let mut cases = 0u64;
        let mut round = 0u64;
        while started.elapsed() < per_target {
            let left = per_target.saturating_sub(started.elapsed());
            match fuzz::run(target, seed.wrapping_add(round), 200_000, left) {
                Ok(stats) => cases += stats.cases,
                Err(f) => {
                    println!(
                        "fuzz {}: FAILED after {} cases: {} on input {:?}",
                        f.target.name(),
                        cases,
                        f.problem,
                        f.input.escape_ascii().to_string()
                    );
                    println!("add it to smtp_relay_fuzz::REGRESSIONS with the fix");
                    return ExitCode::FAILURE;
                }
            }
            round += 1;
        }
        println!(
            "fuzz {}: {cases} cases in {:.1}s, no failure (seed {seed}, {round} rounds)",
            target.name(),
            started.elapsed().as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}
