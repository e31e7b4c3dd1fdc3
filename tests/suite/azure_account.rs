//! Which Azure account the Azure tests use, and skipping them.
//!
//! Nothing here starts Azurite. Run `tools/azurite.sh start` and
//! `eval "$(tools/azurite.sh env)"` (tools/test.sh does both), or point
//! `AZURE_STORAGE_CONNECTION_STRING` at an account. Without it the tests
//! fail, saying so, unless `BI_LEDGER_SKIP_AZURE=1` is set.

use bi_ledger::backend::azure::{ConnectionInfo, CONNECTION_STRING_ENV};

pub const SKIP_ENV: &str = "BI_LEDGER_SKIP_AZURE";

/// The account to test against, or `None` to skip.
pub fn account() -> Option<ConnectionInfo> {
    match std::env::var(CONNECTION_STRING_ENV) {
        Ok(cs) => Some(ConnectionInfo::parse(&cs).unwrap_or_else(|e| panic!("{e}"))),
        Err(_) if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") => None,
        Err(_) => panic!(
            "{CONNECTION_STRING_ENV} is not set, so the Azure backend cannot be tested. \
             Start Azurite with `tools/azurite.sh start` and `eval \"$(tools/azurite.sh env)\"` \
             (or run tools/test.sh, which does both), or set {SKIP_ENV}=1 to skip these tests"
        ),
    }
}

/// Returns from the calling test when the Azure tests are skipped. This
/// file must be the crate-level module `azure_account`.
macro_rules! account_or_skip {
    () => {
        match $crate::azure_account::account() {
            Some(a) => a,
            None => {
                eprintln!(
                    "skipped: {}=1 and {} unset",
                    $crate::azure_account::SKIP_ENV,
                    bi_ledger::backend::azure::CONNECTION_STRING_ENV
                );
                return;
            }
        }
    };
}
pub(crate) use account_or_skip;
