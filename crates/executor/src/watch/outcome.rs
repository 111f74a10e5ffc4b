//! [`Outcome`]: how a watched build ended, as the page shows it — built,
//! or failed with its exit code or signal and whose fault, or cancelled.

use serde_json::{Value, json};

use crate::{BuildError, BuildResult};

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Outcome {
    ok: bool,
    summary: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
    /// Whose fault a failure was: `build`, `request`, `host`, `store`.
    fault: Option<&'static str>,
}

impl Outcome {
    pub(super) fn of(result: &Result<BuildResult, BuildError>) -> Self {
        use tvix_oci_spec::proto::events::{build_event::Event, failed::Fault};
        let e = match result {
            Ok(r) => {
                let summary = match r.build.outputs.len() {
                    1 => "built its output".to_owned(),
                    n => format!("built its {n} outputs"),
                };
                return Self::ended(true, summary);
            }
            Err(e) => e,
        };
        let mut o = Self::ended(false, crate::grpc::outcome_of(e));
        if let Event::Failed(f) = crate::wire::failed(e, 0) {
            (o.exit_code, o.signal) = (f.exit_code, f.signal);
        }
        o.fault = Some(match crate::wire::fault_of(e) {
            Fault::Build => "build",
            Fault::Request => "request",
            Fault::Store => "store",
            Fault::Host | Fault::Unspecified => "host",
        });
        o
    }

    pub(super) fn cancelled() -> Self {
        Self::ended(
            false,
            "cancelled (its client went away, or the server stopped)".into(),
        )
    }

    fn ended(ok: bool, summary: String) -> Self {
        Self {
            ok,
            summary,
            exit_code: None,
            signal: None,
            fault: None,
        }
    }
}

impl Outcome {
    pub(super) fn to_json(&self) -> Value {
        json!({"ok": self.ok, "summary": self.summary, "exit_code": self.exit_code,
               "signal": self.signal, "fault": self.fault})
    }
}
