//! A real USB bus in the test VM: QEMU's xhci controller, into which the host plugs stick
//! images as usb-storage devices over QMP when a test inside the guest asks for it.
//!
//! The guest asks over a virtio-serial port (`/dev/virtio-ports/guilocker.usb`), one JSON line
//! per request (`{"op":"plug","id":"usb1","image":"/…/stick.img"}`, `{"op":"unplug","id":"usb1"}`),
//! and the host answers one line (`{"ok":true}` or `{"ok":false,"error":"…"}`) once QEMU has
//! done it. A port, not files in a shared folder: the guest's 9p mount never tells it that
//! the host wrote a file, and a blocking read needs no polling.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The name of the guest's end of the request channel.
pub const PORT: &str = "guilocker.usb";
/// The USB controller's bus, as usb-storage devices name it.
const BUS: &str = "xhci.0";
/// How long QEMU may take to answer a command or to report an unplug.
const QMP_WAIT: Duration = Duration::from_secs(60);
/// How long the guest waits for the host's answer (a plug is one QMP exchange, an unplug
/// waits for QEMU's DEVICE_DELETED).
const REPLY_WAIT: Duration = Duration::from_secs(120);
/// Between two looks at sysfs, which sends us no event.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum UsbError {
    #[error("{path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP {command}: {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP: no {what} within {} s", .within.as_secs())]
    Timeout { what: String, within: Duration },
    #[error("QMP: QEMU closed the connection")]
    Closed,
    #[error("QMP: {0}")]
    Protocol(String),
}

/// A QMP connection to QEMU: JSON lines, commands answered in order, events in between.
pub struct Qmp {
    stream: BufReader<UnixStream>,
    /// What a partial line held when a read deadline passed.
    pending: String,
    /// Events read while waiting for something else.
    events: Vec<Value>,
}

impl Qmp {
    /// Connects, reads QEMU's greeting and leaves capabilities negotiation.
    pub fn connect(path: &Path) -> Result<Self, UsbError> {
        let stream = UnixStream::connect(path).map_err(|source| UsbError::Socket {
            path: path.to_owned(),
            source,
        })?;
        let mut qmp = Self {
            stream: BufReader::new(stream),
            pending: String::new(),
            events: Vec::new(),
        };
        let greeting = qmp.read(QMP_WAIT)?;
        if greeting.get("QMP").is_none() {
            return Err(UsbError::Protocol(format!("greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// One message, within `timeout`.
    fn read(&mut self, timeout: Duration) -> Result<Value, UsbError> {
        self.stream.get_ref().set_read_timeout(Some(timeout))?;
        match self.stream.read_line(&mut self.pending) {
            Ok(0) => Err(UsbError::Closed),
            Ok(_) => {
                let line = std::mem::take(&mut self.pending);
                serde_json::from_str(&line).map_err(|e| UsbError::Protocol(format!("{e}: {line}")))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(UsbError::Timeout {
                    what: "message".into(),
                    within: timeout,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `command`; its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, UsbError> {
        let mut line = json!({"execute": command, "arguments": arguments}).to_string();
        line.push('\n');
        self.stream.get_mut().write_all(line.as_bytes())?;
        loop {
            let mut message = self.read(QMP_WAIT)?;
            if let Some(value) = message.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = message.get("error") {
                return Err(UsbError::Refused {
                    command: command.into(),
                    class: error["class"].as_str().unwrap_or("?").into(),
                    desc: error["desc"].as_str().unwrap_or("?").into(),
                });
            }
            if message.get("event").is_some() {
                self.events.push(message);
            }
        }
    }

    /// The first event `name` whose data `pred` accepts, read now or before.
    pub fn wait_event(
        &mut self,
        name: &str,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value, UsbError> {
        let mut matches = |e: &Value| e["event"] == name && pred(&e["data"]);
        if let Some(i) = self.events.iter().position(&mut matches) {
            return Ok(self.events.remove(i));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match self.read(left.max(Duration::from_millis(1))) {
                Err(UsbError::Timeout { .. }) => {
                    return Err(UsbError::Timeout {
                        what: format!("{name} event"),
                        within: timeout,
                    })
                }
                other => other?,
            };
            if matches(&message) {
                return Ok(message);
            }
            if message.get("event").is_some() {
                self.events.push(message);
            }
        }
    }

    /// Plugs `image` into the USB controller as a removable usb-storage device `id` (also its
    /// serial number, by which the guest finds it).
    pub fn plug(&mut self, id: &str, image: &Path) -> Result<(), UsbError> {
        let node = node_of(id);
        self.execute(
            "blockdev-add",
            json!({"driver": "raw", "node-name": node,
                   "file": {"driver": "file", "filename": image}}),
        )?;
        let added = self.execute(
            "device_add",
            json!({"driver": "usb-storage", "bus": BUS, "drive": node, "id": id,
                   "removable": true, "serial": id}),
        );
        if added.is_err() {
            let _ = self.execute("blockdev-del", json!({"node-name": node}));
        }
        added.map(drop)
    }

    /// Pulls device `id` out, waits until QEMU has let it go, and closes its image.
    pub fn unplug(&mut self, id: &str) -> Result<(), UsbError> {
        self.execute("device_del", json!({"id": id}))?;
        self.wait_event("DEVICE_DELETED", |d| d["device"] == id, QMP_WAIT)?;
        self.execute("blockdev-del", json!({"node-name": node_of(id)}))?;
        Ok(())
    }
}

fn node_of(id: &str) -> String {
    format!("{id}-image")
}

/// The host's side: the sockets QEMU is given, and a thread that serves the guest's requests
/// over QMP for the VM's life.
pub struct UsbHost {
    qmp: PathBuf,
    port: PathBuf,
    _listener_thread: std::thread::JoinHandle<()>,
}

impl UsbHost {
    /// Listens in `dir` (a path without spaces: QEMU's options go through vng's shell) for
    /// QEMU's end of the request port.
    pub fn start(dir: &Path) -> Result<Self, UsbError> {
        std::fs::create_dir_all(dir)?;
        let qmp = dir.join("qmp.sock");
        let port = dir.join("port.sock");
        for socket in [&qmp, &port] {
            let _ = std::fs::remove_file(socket);
        }
        let listener = UnixListener::bind(&port).map_err(|source| UsbError::Socket {
            path: port.clone(),
            source,
        })?;
        let qmp_path = qmp.clone();
        let thread = std::thread::Builder::new()
            .name("usb-host".into())
            .spawn(move || serve(&listener, &qmp_path))?;
        Ok(Self {
            qmp,
            port,
            _listener_thread: thread,
        })
    }

    /// What QEMU needs: the xhci controller, QMP on a socket QEMU listens on, and the request
    /// port, whose host end QEMU connects to our listener at start.
    pub fn qemu_opts(&self) -> Vec<String> {
        vec![
            "-device".into(),
            "qemu-xhci,id=xhci".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp.display()),
            "-chardev".into(),
            format!("socket,id=guilocker-usb,path={}", self.port.display()),
            "-device".into(),
            "virtio-serial-pci,id=guilocker-serial".into(),
            "-device".into(),
            format!("virtserialport,bus=guilocker-serial.0,name={PORT},chardev=guilocker-usb"),
        ]
    }
}

/// Answers each request line from QEMU's connection until the VM goes away. QMP is opened at
/// the first request: by then QEMU has long been listening.
fn serve(listener: &UnixListener, qmp_path: &Path) {
    let Ok((stream, _)) = listener.accept() else {
        return;
    };
    let Ok(mut replies) = stream.try_clone() else {
        return;
    };
    let mut qmp: Option<Qmp> = None;
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        let started = Instant::now();
        let request: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let (op, id) = (
            request["op"].as_str().unwrap_or(""),
            request["id"].as_str().unwrap_or(""),
        );
        let done = (|| {
            if qmp.is_none() {
                qmp = Some(Qmp::connect(qmp_path)?);
            }
            let qmp = qmp.as_mut().unwrap();
            match (op, request["image"].as_str()) {
                ("plug", Some(image)) => qmp.plug(id, Path::new(image)),
                ("unplug", _) => qmp.unplug(id),
                _ => Err(UsbError::Protocol(format!("unknown request {line}"))),
            }
        })();
        let reply = match &done {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        };
        println!(
            "usb host| {op} {id}: {} ({} ms)",
            done.as_ref()
                .map_or_else(ToString::to_string, |()| "done".into()),
            started.elapsed().as_millis()
        );
        if writeln!(replies, "{reply}").is_err() {
            return;
        }
    }
}

/// The guest's end of the request port, opened once per test process.
fn port() -> std::sync::MutexGuard<'static, Option<(std::fs::File, Vec<u8>)>> {
    static PORT_FILE: std::sync::Mutex<Option<(std::fs::File, Vec<u8>)>> =
        std::sync::Mutex::new(None);
    let mut port = PORT_FILE.lock().unwrap_or_else(|e| e.into_inner());
    if port.is_none() {
        let path = port_path().unwrap_or_else(|| {
            panic!("no virtio port {PORT} in this VM (booted without the USB host of tests/common/usb.rs?)")
        });
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        *port = Some((file, Vec::new()));
    }
    port
}

/// `/dev/virtio-ports/NAME` (udev's link), or the port device sysfs names so.
fn port_path() -> Option<PathBuf> {
    let link = Path::new("/dev/virtio-ports").join(PORT);
    if link.exists() {
        return Some(link);
    }
    std::fs::read_dir("/sys/class/virtio-ports")
        .ok()?
        .flatten()
        .find(|e| std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == PORT))
        .map(|e| Path::new("/dev").join(e.file_name()))
}

/// Sends one request to the host and waits for its answer (with a deadline).
fn request(request: Value) -> Result<(), String> {
    let mut guard = port();
    let (file, buffer) = guard.as_mut().unwrap();
    let mut line = request.to_string();
    line.push('\n');
    file.write_all(line.as_bytes())
        .map_err(|e| format!("sending {request}: {e}"))?;
    let deadline = Instant::now() + REPLY_WAIT;
    let answer = loop {
        if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let answer: Vec<u8> = buffer.drain(..=end).collect();
            break answer;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no answer from the host to {request} within {} s",
                REPLY_WAIT.as_secs()
            ));
        }
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            file.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = nix::poll::PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap();
        if nix::poll::poll(&mut fds, ms).map_err(|e| e.to_string())? == 0 {
            continue;
        }
        let mut chunk = [0u8; 4096];
        match file.read(&mut chunk) {
            Ok(0) => return Err(format!("the host closed {PORT}")),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading {PORT}: {e}")),
        }
    };
    let answer: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    match answer["ok"].as_bool() {
        Some(true) => Ok(()),
        _ => Err(answer["error"].as_str().unwrap_or("?").to_owned()),
    }
}

/// A stick image plugged into the VM's USB bus (from inside the guest). Unplugged on drop if
/// it still is.
pub struct UsbStick {
    pub id: String,
    /// When the host said it was plugged.
    pub plugged_at: Instant,
    partitioned: bool,
    plugged: bool,
}

/// Asks the host to plug `image` (a path the host sees the same) as USB device `id`; returns
/// once QEMU has it. The guest sees it some seconds later: [`UsbStick::volume`].
pub fn plug(id: &str, image: &Path, partitioned: bool) -> UsbStick {
    request(json!({"op": "plug", "id": id, "image": image}))
        .unwrap_or_else(|e| panic!("plugging {} as {id}: {e}", image.display()));
    UsbStick {
        id: id.into(),
        plugged_at: Instant::now(),
        partitioned,
        plugged: true,
    }
}

impl UsbStick {
    /// The USB device in the guest's /sys/bus/usb/devices whose serial number is our id.
    pub fn usb_device(&self) -> Option<PathBuf> {
        std::fs::read_dir("/sys/bus/usb/devices")
            .ok()?
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path().join("serial")).is_ok_and(|s| s.trim() == self.id)
            })
            .and_then(|e| std::fs::canonicalize(e.path()).ok())
    }

    /// The whole disk under our USB device (`sda`), if the kernel made it yet.
    pub fn disk(&self) -> Option<String> {
        let usb = self.usb_device()?;
        std::fs::read_dir("/sys/class/block")
            .ok()?
            .flatten()
            .find(|e| {
                !e.path().join("partition").exists()
                    && std::fs::canonicalize(e.path()).is_ok_and(|p| p.starts_with(&usb))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
    }

    /// Waits (with a deadline) for the device node that carries BitLocker (the first
    /// partition, or the whole disk), and returns it: `/dev/sda1`.
    pub fn volume(&self) -> String {
        let deadline = Instant::now() + REPLY_WAIT;
        loop {
            if let Some(disk) = self.disk() {
                let name = if self.partitioned {
                    format!("{disk}1")
                } else {
                    disk
                };
                let node = format!("/dev/{name}");
                if Path::new("/sys/class/block").join(&name).exists() && Path::new(&node).exists() {
                    return node;
                }
            }
            assert!(
                Instant::now() < deadline,
                "USB stick {} did not appear as a block device within {} s",
                self.id,
                REPLY_WAIT.as_secs()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Asks the host to pull it out; returns once QEMU has let it go.
    pub fn unplug(&mut self) {
        if std::mem::take(&mut self.plugged) {
            request(json!({"op": "unplug", "id": self.id}))
                .unwrap_or_else(|e| panic!("unplugging {}: {e}", self.id));
        }
    }
}

impl Drop for UsbStick {
    fn drop(&mut self) {
        if std::mem::take(&mut self.plugged) {
            if let Err(e) = request(json!({"op": "unplug", "id": self.id})) {
                eprintln!("unplugging {}: {e}", self.id);
            }
        }
    }
}

/// Waits (with a deadline) until `path` is gone: a powered-off USB device leaving sysfs.
pub fn wait_gone(path: &Path, within: Duration) -> Duration {
    let started = Instant::now();
    while path.exists() {
        assert!(
            started.elapsed() < within,
            "{} still there after {} s",
            path.display(),
            within.as_secs()
        );
        std::thread::sleep(POLL);
    }
    started.elapsed()
}
