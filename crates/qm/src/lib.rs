//! The library half of the `qm` package: what both the binary and the package's tests use.
//! Today that is the headless-browser driver of the dashboard's tests and of
//! `qm bench dashboard --browser`.

pub mod cdp;
