//! The receiver: import jobs, verification, the once-only ledger.
