//! The machine around the daemon: what sysfs says of block devices (how a disk is attached,
//! who holds it, what sits on the same USB device), who uses a block device, powering a
//! USB stick off, and what the kernel log says of them.

pub mod busy;
pub mod kmsg;
pub mod power;
pub mod sysfs;
