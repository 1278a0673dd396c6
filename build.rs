//! Compiles the dialog's GResource bundle (template, CSS, icon) for `resources_register_include!`.

fn main() {
    glib_build_tools::compile_resources(
        &["ui", "assets"],
        "ui/guilocker.gresource.xml",
        "guilocker.gresource",
    );
}
