//! Writing and reading batch files: CSV (RFC 4180) and JSON Lines, each
//! value in its canonical text ([`crate::ValueKind`]).
//!
//! A row is a list of cells, each `None` (NULL) or the value's canonical
//! text. [`RowWriter`] writes rows to any [`std::io::Write`];
//! [`PartWriter`] is a file of a batch: rows, then optional gzip, then the
//! bytes as stored counted and hashed (SHA-256) for the manifest.
//! [`open_rows`] reads a batch file back as the cells it was written from.
//!
//! The bytes are a function of the cells alone, so the same values give
//! the same files whichever database (or code path) produced them:
//!
//! - CSV: the header row holds the column names; `,` between fields, CRLF
//!   after every record (the last too). A field is quoted (`"`, with `"`
//!   doubled) when it holds `,`, `"`, CR or LF, when it is the empty
//!   string (`""`), and when it is `\.` in a file of one column (so that
//!   PostgreSQL's `COPY … FROM STDIN` does not take it for the end of
//!   data); NULL is an empty unquoted field. This is what
//!   `COPY … FROM STDIN WITH (FORMAT csv, HEADER)` reads back as NULL and
//!   the empty string.
//! - JSON Lines: one object per row with the column names as keys in
//!   column order, no whitespace, `\n` after each. NULL is `null`.
//!   Integer, Decimal and Float cells whose text is a JSON number are
//!   written as that number, character for character (never through a
//!   float); other texts of those kinds (`NaN`, `Infinity`) as strings.
//!   Boolean `true`/`false` bare. A Json cell holding valid JSON is the
//!   value itself with the whitespace outside its strings removed, but for
//!   a JSON string or `null`, which are written as a string of their text
//!   (as themselves they would read back as another cell's string, or as
//!   NULL); one that is not valid JSON is written as a string. Everything else is a
//!   JSON string, escaping `"`, `\`, and control characters (`\b \f \n \r
//!   \t`, others `\u00xx`), non-ASCII as is.

mod read;
mod stored;
pub mod text;
mod write;

pub use read::{open_rows, RowReader};
pub use stored::{Compressed, PartFile, PartSummary, PartWriter, StoredWriter};
pub use write::RowWriter;
