//! The machine around the daemon: what sysfs says of block devices (how a disk is attached,
//! who holds it, what sits on the same USB device), who uses a block device, and powering a
//! USB stick off.

pub mod busy;
pub mod power;
pub mod sysfs;
