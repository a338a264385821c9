//! The sender: export jobs, their windows and run history.
//!
//! * [`job`]: an `[[export]]` job's configuration ([`ExportJob`]);
//! * [`name`]: file and batch name templates;
//! * [`runs`](mod@runs): the run history, `ferry_batch_runs`;
//! * [`run`]: the [`Exporter`], which runs windows, hands over the files
//!   and writes the manifest last;
//! * [`bulk`]: the HTTP bulk alternative to files;
//! * [`write`](mod@write): running the query into local part files.

pub mod bulk;
pub mod job;
pub mod name;
pub mod run;
pub mod runs;
pub mod write;

pub use job::{ExportJob, WatermarkConfig, WatermarkInitial};
pub use run::{Exporter, Mark, RunWindow};
pub use runs::{runs, RunHistory, RunRecord, RunStatus, Trigger};
