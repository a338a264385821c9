//! Running an export query and writing its rows to local part files.
