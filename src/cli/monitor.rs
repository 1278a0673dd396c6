//! `guilocker monitor`: print daemon events as they happen.

use super::Failure;
use crate::client::Client;
use std::io::Write;
use std::path::Path;
use tr::tr;

pub fn run(socket: &Path, json: bool) -> Result<(), Failure> {
    let events = Client::connect(socket)?.subscribe()?;
    for event in events {
        let (kind, device) = event?;
        let mut out = std::io::stdout().lock();
        if json {
            // Flat, so `jq .state` works: the event kind next to the device's fields.
            let mut value =
                serde_json::to_value(&device).map_err(|e| Failure::new(1, e.to_string()))?;
            if let Some(obj) = value.as_object_mut() {
                obj.insert("event".into(), kind.as_str().into());
            }
            writeln!(out, "{value}")?;
        } else {
            let mut line = format!(
                "{:<8} {} {}",
                kind.as_str(),
                device.device,
                device.state.as_str()
            );
            if let Some(m) = &device.mountpoint {
                line.push_str(&format!(" {m}"));
            }
            if let Some(e) = &device.error {
                line.push_str(&format!(" ({e})"));
            }
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    Err(Failure::new(1, tr!("the daemon closed the connection")))
}
