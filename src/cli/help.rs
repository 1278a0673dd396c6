//! `--help` in the reader's language. clap's texts come from doc comments, fixed at build
//! time; here they are looked up in the catalog as the command is built, and the hidden
//! `guilocker messages` prints them for the translation template (packaging/lib.sh's
//! extract_messages), so they are translated like every other message.

use super::Cli;
use clap::{Arg, Command, CommandFactory};
use std::collections::BTreeSet;
use std::io::Write;
use tr::tr;

/// The command line as parsed: every help text translated, and clap's headings too where
/// the catalog has them. In English it is the command clap would build.
pub fn localized_command() -> Command {
    let mut cmd = Cli::command();
    // Built first, so the help flags and the `help` subcommand clap adds are there to
    // translate.
    cmd.build();
    translate(cmd, &Headings::new())
}

/// clap's own words, in the reader's language; `None` in English, where clap's own
/// (bold, underlined) headings stay.
struct Headings {
    translated: Option<[String; 4]>,
}

impl Headings {
    fn new() -> Self {
        let words = [
            tr!("Usage:"),
            tr!("Commands"),
            tr!("Options"),
            tr!("Arguments"),
        ];
        let english = ["Usage:", "Commands", "Options", "Arguments"];
        Self {
            translated: (words != english).then_some(words),
        }
    }
}

fn translate(cmd: Command, headings: &Headings) -> Command {
    let about = cmd.get_about().map(|s| crate::i18n::lookup(&s.to_string()));
    let long_about = cmd
        .get_long_about()
        .map(|s| crate::i18n::lookup(&s.to_string()));
    let mut cmd = cmd.mut_args(|arg| translate_arg(arg, headings));
    if let Some(about) = about {
        cmd = cmd.about(about);
    }
    if let Some(long_about) = long_about {
        cmd = cmd.long_about(long_about);
    }
    if let Some([usage, commands, _, _]) = &headings.translated {
        // clap's template with the usage heading in words of the reader's language.
        cmd = cmd
            .help_template(format!(
                "{{before-help}}{{about-with-newline}}\n{usage} {{usage}}\n\n{{all-args}}{{after-help}}"
            ))
            .subcommand_help_heading(commands.clone());
    }
    cmd.mut_subcommands(|sub| translate(sub, headings))
}

fn translate_arg(arg: Arg, headings: &Headings) -> Arg {
    let help = arg.get_help().map(|s| crate::i18n::lookup(&s.to_string()));
    let long_help = arg
        .get_long_help()
        .map(|s| crate::i18n::lookup(&s.to_string()));
    let mut arg = arg;
    if let Some(help) = help {
        arg = arg.help(help);
    }
    if let Some(long_help) = long_help {
        arg = arg.long_help(long_help);
    }
    if let (Some([_, _, options, arguments]), None) = (&headings.translated, arg.get_help_heading())
    {
        let heading = if arg.is_positional() {
            arguments
        } else {
            options
        };
        arg = arg.help_heading(heading.clone());
    }
    arg
}

/// Every help text of the command line, each once, in the order they are shown.
pub fn texts() -> Vec<String> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    collect(&cmd, &mut seen, &mut out);
    out
}

fn collect(cmd: &Command, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
    let mut add = |text: Option<String>| {
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            if seen.insert(text.clone()) {
                out.push(text);
            }
        }
    };
    add(cmd.get_about().map(ToString::to_string));
    add(cmd.get_long_about().map(ToString::to_string));
    for arg in cmd.get_arguments() {
        add(arg.get_help().map(ToString::to_string));
        add(arg.get_long_help().map(ToString::to_string));
    }
    // Hidden ones are for guilocker itself and packaging, never shown.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, seen, out);
    }
}

/// `guilocker messages`: the help texts as a translation template, for msgcat.
pub fn messages() -> Result<(), super::Failure> {
    let mut out =
        String::from("msgid \"\"\nmsgstr \"\"\n\"Content-Type: text/plain; charset=UTF-8\\n\"\n\n");
    for text in texts() {
        out.push_str(&format!(
            "#: src/cli/mod.rs\nmsgid {}\nmsgstr \"\"\n\n",
            po_string(&text)
        ));
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

/// A PO string literal.
fn po_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_help_text_is_collected() {
        let texts = texts();
        for text in [
            "Unlock and mount BitLocker USB sticks",
            "Read the password from standard input (one line)",
            "Print help",
            "Print this message or the help of the given subcommand(s)",
        ] {
            assert!(texts.iter().any(|t| t == text), "{text:?} missing");
        }
    }

    #[test]
    fn english_help_is_claps_own() {
        // No catalog in unit tests: the help must be what clap prints by itself.
        let render = |mut cmd: Command| cmd.render_long_help().to_string();
        let mut plain = Cli::command();
        plain.build();
        assert_eq!(render(localized_command()), render(plain));
        let sub = |mut cmd: Command| {
            cmd.find_subcommand_mut("unlock")
                .expect("unlock")
                .render_help()
                .to_string()
        };
        let mut plain = Cli::command();
        plain.build();
        assert_eq!(sub(localized_command()), sub(plain));
    }

    #[test]
    fn po_strings_are_escaped() {
        assert_eq!(po_string("a \"b\"\n\\c"), r#""a \"b\"\n\\c""#);
    }
}
