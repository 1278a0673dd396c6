//! guilocker: unlock and mount BitLocker USB sticks on the Linux desktop.
//!
//! One library behind one binary: `daemon` is the root service, `cli` the command-line
//! clients, `protocol` what they say to each other. GTK lives only in the separate
//! `guilocker-dialog` binary, so the root daemon never maps it.

pub mod agent;
pub mod bitlocker;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dialog;
pub mod engine;
pub mod i18n;
pub mod logging;
pub mod logind;
pub mod pidfile;
pub mod process;
pub mod protocol;
pub mod secret;
pub mod text;
pub mod units;
