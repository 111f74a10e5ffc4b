//! The end of `run`, local or `--remote`: each build's result as JSON on
//! stdout (a local run's `BuildResult::to_json`, whichever side built it),
//! failures said on stderr too, and the exit code of the worst failure.

use serde_json::json;
use tvix_oci_executor::BuildResult;

use crate::exit::exit;

/// Why a build gave no result: the exit code it makes `run` end with, and
/// its message.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub msg: String,
}

impl Failure {
    /// The failure of a local build: 1 for the build's fault, 2 for the
    /// request's, 3 for the host's or the store's.
    pub fn of(e: tvix_oci_executor::BuildError) -> Self {
        Failure {
            code: crate::exit::code_of_build(&e),
            msg: e.to_string(),
        }
    }
}

/// Prints the results as JSON on stdout (one value, or an array for
/// several builds; a failed build as `{"error": …}`, said on stderr too)
/// and fails with the worst exit code of the failures.
pub fn report(results: Vec<Result<BuildResult, Failure>>) -> anyhow::Result<()> {
    let mut worst = 0u8;
    let mut out = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(res) => out.push(BuildResult::to_json(&res)),
            Err(f) => {
                eprintln!("error: build {}: {}", i + 1, f.msg);
                worst = worst.max(f.code);
                out.push(json!({"error": f.msg}));
            }
        }
    }
    print_results(out, worst)
}

/// Prints `out` as JSON on stdout (one value, or an array of several) and
/// fails with `worst`, the worst exit code of the failures (0: none).
pub fn print_results(mut out: Vec<serde_json::Value>, worst: u8) -> anyhow::Result<()> {
    let doc = if out.len() == 1 {
        out.remove(0)
    } else {
        serde_json::Value::Array(out)
    };
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    match worst {
        0 => Ok(()),
        code => Err(exit(code, "")),
    }
}
