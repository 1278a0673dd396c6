//! `guilocker dialog`: the GTK password dialog the agent starts, speaking the dialog pipe.
//!
//! The agent writes [`DialogInput`] frames to stdin and reads [`DialogOutput`] frames from
//! stdout; the exit status is one of the `DIALOG_EXIT_*` codes. This is the only module that
//! loads GTK.

mod input;
mod model;
mod startup_key;
mod window;

use crate::protocol::{
    write_frame, DialogInput, DialogOutput, FrameError, DIALOG_EXIT_CANCELLED, DIALOG_EXIT_CLOSED,
    DIALOG_EXIT_NO_DISPLAY, DIALOG_EXIT_UNLOCKED,
};
use gtk::prelude::*;
use gtk::{gdk, gio, glib};
use input::InputReader;
use std::cell::Cell;
use std::rc::Rc;
use window::{DialogRequest, UnlockDialog};

/// The application id; also the resource prefix.
pub const APP_ID: &str = "org.guilocker.Dialog";

/// Runs the dialog to the end and returns the process exit status: [`DIALOG_EXIT_UNLOCKED`],
/// [`DIALOG_EXIT_CANCELLED`], [`DIALOG_EXIT_NO_DISPLAY`] or [`DIALOG_EXIT_CLOSED`] (also for
/// a broken pipe or a malformed frame, after a line on stderr).
pub fn run() -> i32 {
    // Checked here, because GtkApplication's own start-up would exit(1) without a display.
    if gtk::init().is_err() {
        eprintln!("guilocker dialog: cannot open a display (is DISPLAY or WAYLAND_DISPLAY set?)");
        return DIALOG_EXIT_NO_DISPLAY;
    }
    // The bundle is compiled into this binary by build.rs, so failing here is a build bug.
    gio::resources_register_include!("guilocker.gresource")
        .expect("the dialog's resources are built into the binary");

    let app = gtk::Application::new(Some(APP_ID), gio::ApplicationFlags::NON_UNIQUE);
    app.connect_startup(|_| load_style());
    let code = Rc::new(Cell::new(DIALOG_EXIT_CLOSED));
    app.connect_activate(glib::clone!(
        #[strong]
        code,
        move |app| {
            // Nothing is shown until the `show` frame arrives; keep the app alive till then.
            let hold = app.hold();
            let app = app.clone();
            let code = code.clone();
            glib::spawn_future_local(async move {
                code.set(converse(&app).await);
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

/// The whole conversation with the agent; returns the exit status.
async fn converse(app: &gtk::Application) -> i32 {
    let mut input = match InputReader::stdin() {
        Ok(input) => input,
        Err(e) => {
            eprintln!("guilocker dialog: cannot read stdin: {e}");
            return DIALOG_EXIT_CLOSED;
        }
    };
    let device = match input.next().await {
        Ok(Some(DialogInput::Show { device })) => device,
        Ok(None) | Ok(Some(DialogInput::Close { .. })) => return DIALOG_EXIT_CLOSED,
        Ok(Some(DialogInput::Result { .. })) => {
            eprintln!("guilocker dialog: expected a show frame first");
            return DIALOG_EXIT_CLOSED;
        }
        Err(e) => {
            eprintln!("guilocker dialog: {e}");
            return DIALOG_EXIT_CLOSED;
        }
    };

    let (sender, events) = async_channel::unbounded();
    let requests = sender.clone();
    let dialog = UnlockDialog::new(app, &device, move |request| {
        // Unbounded and still open while the dialog exists: sending cannot fail.
        let _ = requests.try_send(Event::Request(request));
    });
    dialog.present();
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
        let Ok(event) = events.recv().await else {
            break DIALOG_EXIT_CLOSED;
        };
        if let Some(code) = handle(&dialog, event) {
            break code;
        }
    };
    dialog.finish();
    reader.abort();
    code
}

/// Handles one event; `Some(status)` ends the dialog.
fn handle(dialog: &UnlockDialog, event: Event) -> Option<i32> {
    match event {
        Event::Request(DialogRequest::Unlock { secret, read_only }) => {
            let frame = DialogOutput::Unlock { secret, read_only };
            if let Err(e) = write_frame(&mut std::io::stdout().lock(), &frame) {
                eprintln!("guilocker dialog: cannot write to the agent: {e}");
                return Some(DIALOG_EXIT_CLOSED);
            }
            None
        }
        Event::Request(DialogRequest::Cancel) => {
            // The agent may already be gone; cancelling is the answer either way.
            let _ = write_frame(&mut std::io::stdout().lock(), &DialogOutput::Cancel);
            Some(DIALOG_EXIT_CANCELLED)
        }
        Event::Input(Ok(Some(DialogInput::Result { ok: true, .. }))) => Some(DIALOG_EXIT_UNLOCKED),
        Event::Input(Ok(Some(DialogInput::Result {
            ok: false,
            kind,
            message,
        }))) => {
            dialog.show_failure(kind, message.as_deref());
            None
        }
        Event::Input(Ok(Some(DialogInput::Show { .. }))) => {
            eprintln!("guilocker dialog: ignoring a second show frame");
            None
        }
        Event::Input(Ok(Some(DialogInput::Close { .. })) | Ok(None)) => Some(DIALOG_EXIT_CLOSED),
        Event::Input(Err(e)) => {
            eprintln!("guilocker dialog: {e}");
            Some(DIALOG_EXIT_CLOSED)
        }
    }
}
