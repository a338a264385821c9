//! Schedules and windows: cron expressions with a time zone, or every N
//! minutes; which windows are due, and catching up missed ones.
