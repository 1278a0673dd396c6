//! Private state and behaviour of [`super::UnlockDialog`], bound to `ui/unlock-dialog.ui`.

use super::DialogRequest;
use crate::dialog::keyring::Remember;
use crate::dialog::model::{self, KeyCheck, Method};
use crate::dialog::startup_key;
use crate::protocol::{DeviceInfo, UnlockSecret};
use crate::secret::{SecretBytes, SecretString};
use gtk::subclass::prelude::*;
use gtk::{gdk, glib, prelude::*, CompositeTemplate, TemplateChild};
use std::cell::{Cell, RefCell};
use tr::tr;

type RequestHandler = Box<dyn Fn(DialogRequest)>;

#[derive(CompositeTemplate, Default)]
#[template(resource = "/org/guilocker/Dialog/unlock-dialog.ui")]
pub struct UnlockDialog {
    #[template_child]
    drive_title: TemplateChild<gtk::Label>,
    #[template_child]
    drive_details: TemplateChild<gtk::Label>,
    #[template_child]
    drive_path: TemplateChild<gtk::Label>,
    #[template_child]
    drive_description: TemplateChild<gtk::Label>,
    #[template_child]
    method_switcher: TemplateChild<gtk::Box>,
    #[template_child]
    password_toggle: TemplateChild<gtk::ToggleButton>,
    #[template_child]
    recovery_toggle: TemplateChild<gtk::ToggleButton>,
    #[template_child]
    key_file_toggle: TemplateChild<gtk::ToggleButton>,
    #[template_child]
    method_note: TemplateChild<gtk::Label>,
    #[template_child]
    method_stack: TemplateChild<gtk::Stack>,
    #[template_child]
    password_entry: TemplateChild<gtk::PasswordEntry>,
    #[template_child]
    recovery_key_id: TemplateChild<gtk::Label>,
    #[template_child]
    recovery_entry: TemplateChild<gtk::Entry>,
    #[template_child]
    recovery_status: TemplateChild<gtk::Label>,
    #[template_child]
    choose_key_button: TemplateChild<gtk::Button>,
    #[template_child]
    key_file_label: TemplateChild<gtk::Label>,
    #[template_child]
    read_only_check: TemplateChild<gtk::CheckButton>,
    #[template_child]
    remember_box: TemplateChild<gtk::Box>,
    #[template_child]
    remember_session: TemplateChild<gtk::CheckButton>,
    #[template_child]
    remember_forever: TemplateChild<gtk::CheckButton>,
    #[template_child]
    remember_at_login: TemplateChild<gtk::CheckButton>,
    #[template_child]
    error_label: TemplateChild<gtk::Label>,
    #[template_child]
    spinner: TemplateChild<gtk::Spinner>,
    #[template_child]
    status_label: TemplateChild<gtk::Label>,
    #[template_child]
    cancel_button: TemplateChild<gtk::Button>,
    #[template_child]
    close_button: TemplateChild<gtk::Button>,
    #[template_child]
    unlock_button: TemplateChild<gtk::Button>,

    /// What this drive can be opened with, in the order offered.
    methods: RefCell<Vec<Method>>,
    /// The chosen .BEK file's bytes, until they are sent.
    startup_key: RefCell<Option<SecretBytes>>,
    /// The session has a keyring: "Remember" is offered for passwords and recovery keys.
    keyring: Cell<bool>,
    /// An unlock was sent and its result has not come back.
    busy: Cell<bool>,
    /// The dialog is going away for a reason the agent already knows; closing sends nothing.
    finished: Cell<bool>,
    on_request: RefCell<Option<RequestHandler>>,
}

#[glib::object_subclass]
impl ObjectSubclass for UnlockDialog {
    const NAME: &'static str = "GuilockerUnlockDialog";
    type Type = super::UnlockDialog;
    type ParentType = gtk::Window;

    fn class_init(klass: &mut Self::Class) {
        klass.bind_template();
        klass.bind_template_callbacks();
        klass.install_action("dialog.unlock", None, |dialog, _, _| dialog.imp().unlock());
        klass.install_action("dialog.cancel", None, |dialog, _, _| dialog.imp().cancel());
        klass.install_action_async("dialog.choose-key", None, |dialog, _, _| async move {
            dialog.imp().choose_key().await;
        });
        klass.add_binding_action(
            gdk::Key::Escape,
            gdk::ModifierType::empty(),
            "dialog.cancel",
        );
    }

    fn instance_init(obj: &glib::subclass::InitializingObject<Self>) {
        obj.init_template();
    }
}

impl ObjectImpl for UnlockDialog {}

impl WidgetImpl for UnlockDialog {}

impl WindowImpl for UnlockDialog {
    // The title bar's close button means the same as Cancel.
    fn close_request(&self) -> glib::Propagation {
        if self.finished.get() {
            return self.parent_close_request();
        }
        self.cancel();
        glib::Propagation::Stop
    }
}

#[gtk::template_callbacks]
impl UnlockDialog {
    #[template_callback]
    fn on_method_toggled(&self, button: &gtk::ToggleButton) {
        if !button.is_active() {
            return;
        }
        let method = if *button == *self.recovery_toggle {
            Method::RecoveryKey
        } else if *button == *self.key_file_toggle {
            Method::StartupKey
        } else {
            Method::Password
        };
        self.show_method(method);
    }

    #[template_callback]
    fn on_input_changed(&self, _editable: &glib::Value) {
        self.update();
    }
}

impl UnlockDialog {
    pub(super) fn setup(&self, device: &DeviceInfo, keyring: bool, on_request: RequestHandler) {
        self.on_request.replace(Some(on_request));
        self.keyring.set(keyring);
        self.drive_title.set_label(&model::title(device));
        self.drive_details.set_label(&model::details(device));
        self.drive_path.set_label(&device.device);
        // A disk inside the computer is never asked about at login unless the person asks.
        self.remember_at_login.set_visible(!device.removable);
        // Long by-id paths are ellipsized; the whole path is a hover away.
        self.drive_path.set_tooltip_text(Some(&device.device));
        if let Some(text) = model::description(device) {
            self.drive_description.set_label(&text);
            self.drive_description.set_visible(true);
        }

        if let Some(text) = model::key_ids(device) {
            self.recovery_key_id.set_label(&text);
            self.recovery_key_id.set_visible(true);
        }

        let offer = model::offer(&device.protectors);
        if let Some(note) = &offer.note {
            self.method_note.set_label(note);
            self.method_note.set_visible(true);
        }
        let offered = |m| offer.methods.contains(&m);
        self.password_toggle.set_visible(offered(Method::Password));
        self.recovery_toggle
            .set_visible(offered(Method::RecoveryKey));
        self.key_file_toggle
            .set_visible(offered(Method::StartupKey));
        self.method_switcher.set_visible(offer.methods.len() > 1);
        self.read_only_check.set_visible(!offer.methods.is_empty());
        self.unlock_button.set_visible(!offer.methods.is_empty());
        if offer.methods.is_empty() {
            // Nothing to do here but leave.
            self.cancel_button.set_visible(false);
            self.close_button.set_visible(true);
            self.method_stack.set_visible_child_name("none");
            self.obj().set_default_widget(Some(&*self.close_button));
        }
        let first = offer.methods.first().copied();
        self.methods.replace(offer.methods);
        // The toggles' handler shows the page; the password toggle starts out active.
        match first {
            Some(Method::RecoveryKey) => self.recovery_toggle.set_active(true),
            Some(Method::StartupKey) => self.key_file_toggle.set_active(true),
            Some(method) => self.show_method(method),
            None => self.focus_input(),
        }
        self.update();
    }

    fn show_method(&self, method: Method) {
        // Let go of the focus before its page is hidden, so GtkText gets its focus-out.
        self.drop_focus();
        self.method_stack.set_visible_child_name(method.page());
        self.remember_box.set_visible(
            self.keyring.get() && matches!(method, Method::Password | Method::RecoveryKey),
        );
        self.error_label.set_visible(false);
        self.update();
        self.focus_input();
    }

    fn current_method(&self) -> Option<Method> {
        let page = self.method_stack.visible_child_name()?;
        self.methods
            .borrow()
            .iter()
            .copied()
            .find(|m| m.page() == page.as_str())
    }

    /// Puts the keyboard focus where the person types next.
    fn focus_input(&self) {
        let widget: gtk::Widget = match self.current_method() {
            Some(Method::Password) => self.password_entry.get().upcast(),
            Some(Method::RecoveryKey) => self.recovery_entry.get().upcast(),
            Some(Method::StartupKey) => self.choose_key_button.get().upcast(),
            Some(Method::ClearKey) => self.unlock_button.get().upcast(),
            None => self.close_button.get().upcast(),
        };
        GtkWindowExt::set_focus(&*self.obj(), Some(&widget));
    }

    /// Re-checks the input and enables Unlock only when it can be valid.
    fn update(&self) {
        let check = model::check_recovery_key(&self.recovery_entry.text());
        self.recovery_status.set_label(&check.message());
        if let KeyCheck::Valid(key) = &check {
            if self.recovery_entry.text() != key.expose() {
                self.show_grouped_key_later();
            }
        }
        let invalid = matches!(check, KeyCheck::Invalid(_));
        set_css_class(&*self.recovery_status, "error", invalid);
        set_css_class(&*self.recovery_status, "dim-label", !invalid);
        set_css_class(&*self.recovery_entry, "error", invalid);

        let ready = match self.current_method() {
            Some(Method::Password) => !self.password_entry.text().is_empty(),
            Some(Method::RecoveryKey) => matches!(check, KeyCheck::Valid(_)),
            Some(Method::StartupKey) => self.startup_key.borrow().is_some(),
            Some(Method::ClearKey) => true,
            None => false,
        };
        let obj = self.obj();
        obj.action_set_enabled("dialog.unlock", ready && !self.busy.get());
        obj.action_set_enabled("dialog.choose-key", !self.busy.get());
    }

    /// A complete key pasted or typed without dashes is shown in groups, as Windows prints
    /// it, so it is easy to compare. Deferred: an entry should not be edited inside its own
    /// "changed" handler.
    fn show_grouped_key_later(&self) {
        let dialog = self.obj().downgrade();
        glib::idle_add_local_once(move || {
            let Some(dialog) = dialog.upgrade() else {
                return;
            };
            let imp = dialog.imp();
            if let KeyCheck::Valid(key) = model::check_recovery_key(&imp.recovery_entry.text()) {
                imp.recovery_entry.set_text(key.expose());
                imp.recovery_entry.set_position(-1);
            }
        });
    }

    fn drop_focus(&self) {
        GtkWindowExt::set_focus(&*self.obj(), None::<&gtk::Widget>);
    }

    fn set_busy(&self, busy: bool) {
        if busy {
            self.drop_focus();
        }
        self.busy.set(busy);
        self.spinner.set_visible(busy);
        self.spinner.set_spinning(busy);
        let status = if busy {
            tr!("Unlocking…")
        } else {
            String::new()
        };
        self.status_label.set_label(&status);
        for widget in [
            self.method_switcher.upcast_ref::<gtk::Widget>(),
            self.method_stack.upcast_ref(),
            self.read_only_check.upcast_ref(),
            self.remember_box.upcast_ref(),
        ] {
            widget.set_sensitive(!busy);
        }
        if busy {
            self.error_label.set_visible(false);
        }
        self.update();
    }

    fn unlock(&self) {
        if self.busy.get() {
            return;
        }
        let secret = match self.current_method() {
            Some(Method::Password) => {
                let text = self.password_entry.text();
                if text.is_empty() {
                    return;
                }
                UnlockSecret::Password {
                    value: SecretString::from(text.as_str()),
                }
            }
            Some(Method::RecoveryKey) => {
                match model::check_recovery_key(&self.recovery_entry.text()) {
                    KeyCheck::Valid(value) => UnlockSecret::RecoveryPassword { value },
                    _ => return,
                }
            }
            Some(Method::StartupKey) => match self.startup_key.take() {
                Some(bek) => {
                    self.key_file_label.set_label(&tr!("No file chosen"));
                    UnlockSecret::StartupKey { bek }
                }
                None => return,
            },
            Some(Method::ClearKey) => UnlockSecret::ClearKey,
            None => return,
        };
        let read_only = self.read_only_check.is_active();
        let open_at_login = self.remember_box.is_visible()
            && self.remember_at_login.is_visible()
            && self.remember_at_login.is_active();
        let remember = if !self.remember_box.is_visible() {
            Remember::Never
        } else if self.remember_forever.is_active() || open_at_login {
            Remember::Forever
        } else if self.remember_session.is_active() {
            Remember::UntilLogout
        } else {
            Remember::Never
        };
        // Busy first, so clearing the entries does not flash a "0 of 48 digits" state.
        self.set_busy(true);
        self.password_entry.set_text("");
        self.recovery_entry.set_text("");
        self.request(DialogRequest::Unlock {
            secret,
            read_only,
            remember,
            open_at_login,
        });
    }

    fn cancel(&self) {
        self.request(DialogRequest::Cancel);
    }

    fn request(&self, request: DialogRequest) {
        if let Some(handler) = self.on_request.borrow().as_ref() {
            handler(request);
        }
    }

    /// The agent said the unlock failed: say why and let the person try again.
    pub(super) fn show_failure(&self, message: &str) {
        self.set_busy(false);
        self.error_label.set_label(message);
        self.error_label.set_visible(true);
        self.password_entry.set_text("");
        self.recovery_entry.set_text("");
        self.focus_input();
    }

    /// What "wrong secret" means for the method in use.
    pub(super) fn wrong_secret_message(&self) -> String {
        match self.current_method() {
            Some(Method::RecoveryKey) => tr!("Wrong recovery key."),
            Some(Method::StartupKey) => tr!("This startup key does not open this drive."),
            _ => tr!("Wrong password."),
        }
    }

    pub(super) fn finish(&self) {
        self.finished.set(true);
        self.on_request.replace(None);
        self.obj().close();
    }

    async fn choose_key(&self) {
        let obj = self.obj();
        let chooser = gtk::FileChooserNative::new(
            Some(&tr!("Choose a startup key file")),
            Some(&*obj),
            gtk::FileChooserAction::Open,
            Some(&tr!("_Open")),
            Some(&tr!("_Cancel")),
        );
        chooser.set_modal(true);
        let keys = gtk::FileFilter::new();
        keys.set_name(Some(&tr!("BitLocker startup keys (*.BEK)")));
        keys.add_suffix("bek");
        let all = gtk::FileFilter::new();
        all.set_name(Some(&tr!("All files")));
        all.add_pattern("*");
        chooser.add_filter(&keys);
        chooser.add_filter(&all);

        let response = chooser.run_future().await;
        let path = chooser.file().and_then(|f| f.path());
        chooser.destroy();
        if response != gtk::ResponseType::Accept || self.busy.get() {
            return;
        }
        let Some(path) = path else {
            self.show_key_error(&tr!(
                "That file is not on this computer; copy it here first."
            ));
            return;
        };
        match startup_key::read(&path) {
            Ok(bytes) => {
                self.startup_key.replace(Some(bytes));
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.key_file_label.set_label(&name);
                self.key_file_label.set_tooltip_text(path.to_str());
                self.error_label.set_visible(false);
                self.update();
                GtkWindowExt::set_focus(&*self.obj(), Some(&*self.unlock_button));
            }
            Err(message) => self.show_key_error(&message),
        }
    }

    fn show_key_error(&self, message: &str) {
        self.startup_key.replace(None);
        self.key_file_label.set_label(&tr!("No file chosen"));
        self.error_label.set_label(message);
        self.error_label.set_visible(true);
        self.update();
    }
}

fn set_css_class(widget: &impl IsA<gtk::Widget>, class: &str, on: bool) {
    if on {
        widget.add_css_class(class);
    } else {
        widget.remove_css_class(class);
    }
}
