//! The functions' errors, by kind: the runtime reports each as a `Diagnostic` whose
//! `errorType` names the kind, so CloudWatch (and the function's Errors alarm) can group
//! failures as configuration, transient store trouble, corrupt data or a refused request.

use chronicle_aws::ConfigError;
use chronicle_kernel::StoreError;
use lambda_runtime::Diagnostic;

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// The function's environment is wrong: fails every invocation until redeployed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FunctionError {
    /// The `errorType` the runtime reports (and the logs carry as `kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "Chronicle.Config",
            // Throttling or a timeout: the next scheduled run or retry usually succeeds.
            Self::Store(StoreError::Unavailable(_)) => "Chronicle.StoreUnavailable",
            Self::Store(StoreError::Backend(_)) => "Chronicle.StoreBackend",
            // Stored data failed its checks: needs a person, retrying will not help.
            Self::Store(StoreError::Corrupt(_)) => "Chronicle.Corrupt",
            Self::Store(StoreError::Invalid(_)) => "Chronicle.Invalid",
        }
    }
}

impl From<FunctionError> for Diagnostic {
    fn from(e: FunctionError) -> Self {
        Diagnostic {
            error_type: e.kind().to_owned(),
            error_message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_reaches_the_runtime_as_its_error_type() {
        let cases = [
            (
                FunctionError::from(ConfigError {
                    name: "CHRONICLE_EVENTS_TABLE",
                    problem: "is empty".into(),
                }),
                "Chronicle.Config",
            ),
            (
                StoreError::Unavailable("throttled".into()).into(),
                "Chronicle.StoreUnavailable",
            ),
            (
                StoreError::Backend("no".into()).into(),
                "Chronicle.StoreBackend",
            ),
            (
                StoreError::Corrupt("bad".into()).into(),
                "Chronicle.Corrupt",
            ),
            (
                StoreError::Invalid("bad".into()).into(),
                "Chronicle.Invalid",
            ),
        ];
        for (e, kind) in cases {
            let message = e.to_string();
            let d = Diagnostic::from(e);
            assert_eq!(d.error_type, kind);
            assert_eq!(d.error_message, message);
        }
    }
}
