//! Translations: the template (po/guilocker.pot) is what the sources mark, Korean
//! (po/ko.po) translates every message with its placeholders and mnemonics intact, the .ui
//! templates leave no text unmarked, and the CLI really speaks Korean in a Korean locale.
//! The dialog's Korean window is tested in tests/dialog_gui.rs (`korean_dialog`), the
//! agent's Korean session in tests/e2e_desktop.rs.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn po(name: &str) -> rspolib::POFile {
    let path = Path::new(ROOT).join("po").join(name);
    rspolib::pofile(path.to_str().unwrap()).unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

/// Every message of a catalog: (context, msgid, plural).
fn messages(file: &rspolib::POFile) -> BTreeSet<(String, String, String)> {
    file.entries
        .iter()
        .filter(|e| !e.obsolete)
        .map(|e| {
            (
                e.msgctxt.clone().unwrap_or_default(),
                e.msgid.clone(),
                e.msgid_plural.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn has(program: &str) -> bool {
    common::which(program).is_some()
}

/// Programs a test needs; without them it says why and passes, except under CI=true.
fn tools_present(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !has(p)).collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("needs {} (tests/run.sh installs them)", missing.join(", "));
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
    eprintln!("skipping: {reason}");
    false
}

/// `extract_messages` from packaging/lib.sh (xtr for Rust, xgettext for the .ui files)
/// into a fresh template.
fn fresh_template() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fresh-guilocker.pot");
    common::run_ok(
        Command::new("bash")
            .current_dir(ROOT)
            .arg("-c")
            .arg("source packaging/lib.sh && extract_messages \"$1\"")
            .env("GUILOCKER_BIN", common::bin())
            .arg("extract")
            .arg(&out),
    );
    out
}

#[test]
fn the_template_is_current_and_korean_translates_all_of_it() {
    if !tools_present(&["xtr", "xgettext", "msgcat", "msgcmp"]) {
        return;
    }
    let fresh = fresh_template();
    let fresh_file = rspolib::pofile(fresh.to_str().unwrap()).expect("fresh template");
    let (now, committed) = (messages(&fresh_file), messages(&po("guilocker.pot")));
    let added: Vec<_> = now.difference(&committed).collect();
    let gone: Vec<_> = committed.difference(&now).collect();
    assert!(
        added.is_empty() && gone.is_empty(),
        "po/guilocker.pot is stale (run: source packaging/lib.sh && extract_messages \
         po/guilocker.pot, then msgmerge -U po/ko.po po/guilocker.pot); new: {added:?}; \
         gone: {gone:?}"
    );
    // msgcmp fails on any message of the template that Korean leaves untranslated or fuzzy.
    let out = Command::new("msgcmp")
        .arg(Path::new(ROOT).join("po/ko.po"))
        .arg(&fresh)
        .output()
        .expect("run msgcmp");
    assert!(
        out.status.success(),
        "po/ko.po does not translate every message:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(now.len() > 100, "only {} messages extracted", now.len());
}

/// `{name}` placeholders of a message.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        found.insert(rest[start + 1..start + len].to_owned());
        rest = &rest[start + len + 1..];
    }
    found
}

#[test]
fn korean_keeps_placeholders_and_mnemonics() {
    let ko = po("ko.po");
    assert_eq!(
        ko.metadata.get("Plural-Forms").map(String::as_str),
        Some("nplurals=1; plural=0;")
    );
    let mut wrong = Vec::new();
    for e in ko.entries.iter().filter(|e| !e.obsolete) {
        assert!(
            !e.flags.iter().any(|f| f == "fuzzy"),
            "fuzzy: {:?}",
            e.msgid
        );
        let translations: Vec<&String> = match &e.msgid_plural {
            Some(_) => e.msgstr_plural.iter().collect(),
            None => e.msgstr.iter().collect(),
        };
        let mut want = placeholders(&e.msgid);
        if let Some(plural) = &e.msgid_plural {
            want.extend(placeholders(plural));
        }
        for t in translations {
            assert!(!t.is_empty(), "untranslated: {:?}", e.msgid);
            // A plural's translation may leave out the count ({n}) as English's singular does.
            let got = placeholders(t);
            let missing: Vec<_> = want
                .difference(&got)
                .filter(|p| e.msgid_plural.is_none() || *p != "n")
                .collect();
            if !missing.is_empty() || !got.is_subset(&want) {
                wrong.push(format!("{:?} -> {t:?}", e.msgid));
            }
            // A mnemonic (_U) in English needs one in Korean, or Alt+key stops working.
            if e.msgid.contains('_') && !e.msgid.contains("_(") && !t.contains('_') {
                wrong.push(format!("mnemonic lost: {:?} -> {t:?}", e.msgid));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn every_text_in_the_ui_templates_is_marked_for_translation() {
    const TEXT: [&str; 5] = ["label", "title", "tooltip-text", "placeholder-text", "text"];
    let mut unmarked = Vec::new();
    let mut templates = 0;
    for entry in std::fs::read_dir(Path::new(ROOT).join("ui")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("ui") {
            continue;
        }
        templates += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(r#"<interface domain="guilocker">"#),
            "{}: GtkBuilder must look its strings up in our domain",
            path.display()
        );
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            let is_text = TEXT
                .iter()
                .any(|p| line.starts_with(&format!(r#"<property name="{p}""#)));
            // A value with letters is words; digits and dashes (the key's placeholder) are not.
            let value = line
                .split('>')
                .nth(1)
                .unwrap_or("")
                .split('<')
                .next()
                .unwrap_or("");
            let words = value.chars().any(char::is_alphabetic);
            if is_text && words && !line.contains(r#"translatable="yes""#) {
                unmarked.push(format!("{}:{}: {line}", path.display(), n + 1));
            }
        }
    }
    assert!(templates > 0);
    assert!(
        unmarked.is_empty(),
        "texts not marked translatable: {unmarked:#?}"
    );
}

/// The CLI in a Korean locale, from the catalogs packaging/lib.sh would install.
fn korean_cli(args: &[&str]) -> (i32, String, String) {
    let catalogs = common::catalogs();
    let mut cmd = Command::new(common::bin());
    cmd.args(args)
        .env("LANG", "ko_KR.UTF-8")
        .env_remove("LC_ALL")
        .env_remove("LC_MESSAGES")
        .env_remove("LANGUAGE")
        .env(guilocker::i18n::LOCALEDIR_ENV, catalogs);
    common::output_of(&mut cmd, "")
}

#[test]
fn the_cli_speaks_korean() {
    if !tools_present(&["msgfmt"]) || !common::korean_locale_present() {
        return;
    }
    let (code, _, err) = korean_cli(&["status", "--socket", "/nonexistent/guilocker.sock"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("guilocker 데몬에 연결할 수 없습니다") && err.contains("/nonexistent"),
        "{err}"
    );

    // --help: clap's headings and every help text of ours in Korean.
    let english = guilocker::cli::help::texts();
    for args in [
        &["--help"][..],
        &["unlock", "--help"],
        &["unmount", "-h"],
        &["help", "inspect"],
    ] {
        let (code, out, err) = korean_cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("사용법: guilocker"), "{args:?}:\n{out}");
        assert!(
            out.contains("옵션:") && out.contains("도움말 보기"),
            "{args:?}:\n{out}"
        );
        let left: Vec<&String> = english
            .iter()
            .filter(|t| out.contains(t.as_str()))
            .collect();
        assert!(left.is_empty(), "English left in {args:?}: {left:?}\n{out}");
    }

    if !common::fixtures_present() {
        return;
    }
    let image = common::images()
        .into_iter()
        .find(|i| i.name == "bitlk-aes-xts-128")
        .expect("the fixture bitlk-aes-xts-128");
    let path = image.path();
    let (code, out, err) = korean_cli(&["inspect", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for row in [
        "BitLocker",
        "설명",
        "암호화 방식",
        "암호화",
        "크기",
        "키 보호기",
    ] {
        assert!(out.contains(row), "no {row:?} in:\n{out}");
    }
    for english in ["Description", "Cipher", "Encryption", "Size", "Protectors"] {
        assert!(!out.contains(english), "{english:?} left in:\n{out}");
    }
    // Hangul takes two columns: the values still line up (labels are padded by columns).
    let columns: BTreeSet<usize> = out
        .lines()
        .skip(1)
        .map(|line| {
            let gap = 2 + line[2..].find("  ").expect("label and value");
            let value = gap + line[gap..].len() - line[gap..].trim_start().len();
            guilocker::text::width(&line[..value])
        })
        .collect();
    assert_eq!(columns.len(), 1, "misaligned:\n{out}");
}

#[test]
fn status_and_unmount_in_korean() {
    let _serial = common::serial();
    if !tools_present(&["msgfmt"]) || !common::korean_locale_present() {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root");
        eprintln!("skipping: needs root (a daemon of its own)");
        return;
    }
    let daemon = common::TestDaemon::start("translations");
    let socket = daemon.socket.to_str().unwrap();
    let (code, out, err) = korean_cli(&["status", "--socket", socket]);
    assert_eq!(code, 0, "{err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "장치",
            "상태",
            "연결",
            "크기",
            "레이블",
            "소유자",
            "마운트",
            "위치"
        ],
        "{out}"
    );
    let (code, _, err) = korean_cli(&["unmount", "--all", "--socket", socket]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.trim(), "guilocker: 마운트 해제할 드라이브가 없습니다");
    // One of the daemon's own causes, which the CLI translates.
    let (code, _, err) = korean_cli(&[
        "unlock",
        "/dev/guilocker-no-such",
        "--password-stdin",
        "--socket",
        socket,
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "guilocker: /dev/guilocker-no-such: 그런 장치가 없습니다"
    );
}

#[test]
fn a_file_that_is_not_bitlocker_is_said_in_korean() {
    if !tools_present(&["msgfmt"]) || !common::korean_locale_present() {
        return;
    }
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("translations-plain.img");
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    let (code, _, err) = korean_cli(&["inspect", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("BitLocker 볼륨이 아닙니다") && err.contains(file.to_str().unwrap()),
        "{err}"
    );
}

/// The locale is chosen before parsing, from the raw arguments: one that is not UTF-8 (a
/// file name) must reach clap's own refusal, not panic.
#[test]
fn an_argument_that_is_not_utf8_is_refused_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new(common::bin())
        .arg("inspect")
        .arg(std::ffi::OsStr::from_bytes(b"/tmp/\xff.img"))
        .env("LANG", "C.UTF-8")
        .output()
        .expect("run guilocker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid UTF-8") && !err.contains("panicked"),
        "{err}"
    );
}

/// A daemon of one reply for the CLI: answers `hello`, then `unmount` with `reply`, on one
/// connection, and says what the CLI asked.
fn fake_daemon(reply: &'static str) -> (PathBuf, std::thread::JoinHandle<String>) {
    use std::io::{BufRead, BufReader, Write};
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "fake-daemon-{}-{}",
        std::process::id(),
        reply.len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let serve = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut asked = String::new();
        for answer in [
            format!(
                r#"{{"type":"hello","version":{},"server":"fake"}}"#,
                guilocker::protocol::VERSION
            ),
            reply.to_owned(),
        ] {
            asked.clear();
            reader.read_line(&mut asked).unwrap();
            writeln!(writer, "{answer}").unwrap();
        }
        asked
    });
    (socket, serve)
}

/// A stick left powered: `unmount` succeeds and says why, in English and in Korean.
#[test]
fn a_stick_left_powered_is_said_with_its_reason() {
    const KEPT: &str = r#"{"type":"unmounted","devices":["/dev/sdb1"],"power":[{"disk":"/dev/sdb","powered_off":false,"in_use":{"device":"/dev/sdb2","cause":"mounted","mountpoint":"/media/alice/DATA"}}]}"#;
    let (socket, serve) = fake_daemon(KEPT);
    let (code, _, err) = common::output_of(
        Command::new(common::bin())
            .args(["unmount", "/dev/sdb1", "--socket"])
            .arg(&socket)
            .env("LANG", "C.UTF-8")
            .env_remove("LC_ALL")
            .env_remove("LC_MESSAGES")
            .env_remove("LANGUAGE"),
        "",
    );
    assert!(serve.join().unwrap().contains(r#""type":"unmount""#));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.trim(),
        "guilocker: /dev/sdb: not powered off: /dev/sdb2 is mounted at /media/alice/DATA"
    );
    if !tools_present(&["msgfmt"]) || !common::korean_locale_present() {
        return;
    }
    let (socket, serve) = fake_daemon(KEPT);
    let (code, _, err) =
        korean_cli(&["unmount", "/dev/sdb1", "--socket", socket.to_str().unwrap()]);
    serve.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.trim(),
        "guilocker: /dev/sdb: 전원을 끄지 않았습니다: /dev/sdb2이(가) /media/alice/DATA에 마운트되어 있습니다"
    );
}
