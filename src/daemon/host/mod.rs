//! The machine around the daemon: what sysfs says of block devices (how a disk is attached,
//! who holds it, what sits on the same USB device), who else uses a device (a partition
//! before it is opened, anything under a USB stick before it is powered off), powering a USB
//! stick off, and what the kernel log says of them.

pub mod busy;
pub mod inuse;
pub mod kmsg;
pub mod power;
pub mod sysfs;
