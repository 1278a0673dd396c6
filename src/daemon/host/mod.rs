//! The machine around the daemon: what sysfs says of block devices (how a disk is attached,
//! who holds it, what sits on the same USB device) and who else uses a device.

pub mod inuse;
pub mod sysfs;
