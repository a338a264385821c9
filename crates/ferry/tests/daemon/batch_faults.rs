//! Batch hand-off end to end across databases and transports, with faults:
//! PostgreSQL → SFTP → MariaDB, PostgreSQL → S3 → PostgreSQL, an SFTP
//! server stopped mid-upload, exporter and importer killed mid-run.
