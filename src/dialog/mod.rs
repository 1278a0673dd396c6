//! `guilocker dialog`: the GTK password dialog the agent starts, speaking the dialog pipe.
//!
//! The agent writes [`DialogInput`] frames to stdin and reads [`DialogOutput`] frames from
//! stdout; the exit status is one of the `DIALOG_EXIT_*` codes. This is the only module that
//! loads GTK.

mod input;
pub mod keyring;
mod model;
mod remembered;
mod startup_key;
mod window;

use crate::protocol::{
    write_frame, DeviceInfo, DialogInput, DialogOutput, ErrorKind, FrameError, UnlockSecret,
    DIALOG_EXIT_CANCELLED, DIALOG_EXIT_CLOSED, DIALOG_EXIT_NO_DISPLAY, DIALOG_EXIT_UNLOCKED,
};
use gtk::prelude::*;
use gtk::{gdk, gio, glib};
use input::InputReader;
use keyring::Remember;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use window::{DialogRequest, UnlockDialog};

/// The application id; also the resource prefix.
pub const APP_ID: &str = "org.guilocker.Dialog";

/// The dialog binary: the dialog itself, or with arguments the keyring commands that
/// `guilocker remembered` and `guilocker forget` run. Returns the exit status.
pub fn main() -> i32 {
    crate::secret::protect_process();
    crate::i18n::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return run();
    }
    keyring::command(&args).unwrap_or_else(|| {
        eprintln!("usage: guilocker-dialog [--remembered | --forget GUID]");
        2
    })
}

/// Runs the dialog to the end and returns the process exit status: [`DIALOG_EXIT_UNLOCKED`],
/// [`DIALOG_EXIT_CANCELLED`], [`DIALOG_EXIT_NO_DISPLAY`] or [`DIALOG_EXIT_CLOSED`] (also for
/// a broken pipe or a malformed frame, after a line on stderr).
///
/// A secret remembered in the keyring is tried first, with no window: a drive it opens
/// needs no display at all.
pub fn run() -> i32 {
    let context = glib::MainContext::default();
    let mut input = match InputReader::stdin() {
        Ok(input) => input,
        Err(e) => {
            eprintln!("guilocker dialog: cannot read stdin: {e}");
            return DIALOG_EXIT_CLOSED;
        }
    };
    let device = match context.block_on(input.next()) {
        Ok(Some(DialogInput::Show { device })) => device,
        Ok(None) | Ok(Some(DialogInput::Close { .. })) => return DIALOG_EXIT_CLOSED,
        Ok(Some(DialogInput::Unlocked { .. } | DialogInput::Failed { .. })) => {
            eprintln!("guilocker dialog: expected a show frame first");
            return DIALOG_EXIT_CLOSED;
        }
        Err(e) => {
            eprintln!("guilocker dialog: {e}");
            return DIALOG_EXIT_CLOSED;
        }
    };
    let (keyring, failure) = match context.block_on(remembered::try_unlock(&mut input, &device)) {
        remembered::Outcome::Unlocked => return DIALOG_EXIT_UNLOCKED,
        remembered::Outcome::Closed => return DIALOG_EXIT_CLOSED,
        remembered::Outcome::Ask { keyring, failure } => (keyring, failure),
    };

    // Checked here, because GtkApplication's own start-up would exit(1) without a display.
    if gtk::init().is_err() {
        eprintln!(
            "guilocker dialog: {}: cannot open a display to ask (is DISPLAY or WAYLAND_DISPLAY set?)",
            device.device
        );
        return DIALOG_EXIT_NO_DISPLAY;
    }
    // The bundle is compiled into this binary by build.rs, so failing here is a build bug.
    gio::resources_register_include!("guilocker.gresource")
        .expect("the dialog's resources are built into the binary");

    let app = gtk::Application::new(Some(APP_ID), gio::ApplicationFlags::NON_UNIQUE);
    app.connect_startup(|_| load_style());
    let code = Rc::new(Cell::new(DIALOG_EXIT_CLOSED));
    // Activated once: the conversation takes what it needs from here.
    let start = Rc::new(RefCell::new(Some((input, device, failure))));
    app.connect_activate(glib::clone!(
        #[strong]
        code,
        move |app| {
            let Some((input, device, failure)) = start.take() else {
                return;
            };
            // Nothing is shown until the `show` frame arrives; keep the app alive till then.
            let hold = app.hold();
            let app = app.clone();
            let code = code.clone();
            glib::spawn_future_local(async move {
                let conversation = Conversation::new(&app, device, keyring, failure);
                code.set(conversation.run(input).await);
                drop(hold);
                app.quit();
            });
        }
    ));
    // No real argv: `guilocker dialog` would otherwise be taken as a file to open.
    app.run_with_args(&["guilocker-dialog"]);
    code.get()
}

fn load_style() {
    let Some(display) = gdk::Display::default() else {
        return;
    };
    let css = gtk::CssProvider::new();
    css.load_from_resource("/org/guilocker/Dialog/style.css");
    gtk::style_context_add_provider_for_display(
        &display,
        &css,
        gtk::STYLE_PROVIDER_PRIORITY_APPLICATION,
    );
    gtk::IconTheme::for_display(&display).add_resource_path("/org/guilocker/Dialog/icons");
    gtk::Window::set_default_icon_name("guilocker");
}

/// Everything the conversation waits for, from either side.
// Events are few and short-lived; boxing the input would only add noise.
#[allow(clippy::large_enum_variant)]
enum Event {
    Input(Result<Option<DialogInput>, FrameError>),
    Request(DialogRequest),
}

/// The window's conversation with the agent.
struct Conversation {
    dialog: UnlockDialog,
    device: DeviceInfo,
    /// What to store in the keyring once the agent says the drive is open.
    to_remember: Option<(UnlockSecret, Remember)>,
    events: async_channel::Receiver<Event>,
    sender: async_channel::Sender<Event>,
}

impl Conversation {
    /// Shows the window; `failure` is why a remembered secret did not do.
    fn new(
        app: &gtk::Application,
        device: DeviceInfo,
        keyring: bool,
        failure: Option<(ErrorKind, String)>,
    ) -> Self {
        let (sender, events) = async_channel::unbounded();
        let requests = sender.clone();
        let remember = keyring && model::can_remember(&device.protectors);
        let dialog = UnlockDialog::new(app, &device, remember, move |request| {
            // Unbounded and still open while the dialog exists: sending cannot fail.
            let _ = requests.try_send(Event::Request(request));
        });
        if let Some((kind, message)) = failure {
            dialog.show_failure(Some(kind), Some(&message));
        }
        dialog.present();
        Self {
            dialog,
            device,
            to_remember: None,
            events,
            sender,
        }
    }

    /// Runs to the end; returns the exit status.
    async fn run(mut self, mut input: InputReader) -> i32 {
        let sender = self.sender.clone();
        let reader = glib::spawn_future_local(async move {
            loop {
                let frame = input.next().await;
                let last = !matches!(frame, Ok(Some(_)));
                if sender.send(Event::Input(frame)).await.is_err() || last {
                    break;
                }
            }
        });
        let code = loop {
            let Ok(event) = self.events.recv().await else {
                break DIALOG_EXIT_CLOSED;
            };
            if let Some(code) = self.handle(event) {
                break code;
            }
        };
        self.dialog.finish();
        reader.abort();
        if code == DIALOG_EXIT_UNLOCKED {
            self.remember();
        }
        code
    }

    /// Handles one event; `Some(status)` ends the dialog.
    fn handle(&mut self, event: Event) -> Option<i32> {
        match event {
            Event::Request(DialogRequest::Unlock {
                secret,
                read_only,
                remember,
                open_at_login,
            }) => {
                if remember != Remember::Never {
                    self.to_remember = Some((secret.clone(), remember));
                }
                let frame = DialogOutput::Unlock {
                    secret,
                    read_only,
                    remembered: false,
                    open_at_login,
                };
                if let Err(e) = write_frame(&mut std::io::stdout().lock(), &frame) {
                    let device = &self.device.device;
                    eprintln!("guilocker dialog: {device}: cannot write to the agent: {e}");
                    return Some(DIALOG_EXIT_CLOSED);
                }
                None
            }
            Event::Request(DialogRequest::Cancel) => {
                // The agent may already be gone; cancelling is the answer either way.
                let _ = write_frame(&mut std::io::stdout().lock(), &DialogOutput::Cancel);
                Some(DIALOG_EXIT_CANCELLED)
            }
            Event::Input(Ok(Some(DialogInput::Unlocked { label }))) => {
                if label.is_some() {
                    self.device.label = label;
                }
                Some(DIALOG_EXIT_UNLOCKED)
            }
            Event::Input(Ok(Some(DialogInput::Failed { kind, message }))) => {
                self.to_remember = None;
                self.dialog.show_failure(Some(kind), message.as_deref());
                None
            }
            Event::Input(Ok(Some(DialogInput::Show { .. }))) => {
                let device = &self.device.device;
                eprintln!("guilocker dialog: {device}: ignoring a second show frame");
                None
            }
            Event::Input(Ok(Some(DialogInput::Close { .. })) | Ok(None)) => {
                Some(DIALOG_EXIT_CLOSED)
            }
            Event::Input(Err(e)) => {
                eprintln!("guilocker dialog: {}: {e}", self.device.device);
                Some(DIALOG_EXIT_CLOSED)
            }
        }
    }

    /// Stores the secret that opened the drive, if the person asked for that. Only after
    /// the agent said it opened: a wrong secret is never kept.
    fn remember(&mut self) {
        let Some((secret, remember)) = self.to_remember.take() else {
            return;
        };
        let (Some(guid), Some(text)) = (self.device.guid.as_deref(), secret.text()) else {
            return;
        };
        let label = model::keyring_label(&self.device, &secret);
        if let Err(e) = keyring::store(guid, &label, text, remember) {
            eprintln!("guilocker dialog: {}: {e}", self.device.device);
        }
    }
}
