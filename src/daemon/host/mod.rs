//! The machine around the daemon: what sysfs says of block devices (how a disk is attached,
//! who holds it, what sits on the same USB device), and what the kernel log says of them.

pub mod kmsg;
pub mod sysfs;
