//! Every Windows-made fixture image with every protector it has, unlocked with --no-mount:
//! the decrypted view must hash to images.conf, or the refusal must say why.

mod common;

use common::*;
use guilocker::protocol::{Engine, EventKind};
use std::path::Path;

/// The exit code each fixture must give on an engine forced by the config. Our own metadata
/// reader opens the Windows 11 .BEK that stock dislocker cannot read; a volume whose
/// encryption was still running cannot be opened by anyone until Windows finishes it.
fn expected(image: &str, engine: Engine) -> i32 {
    match image {
        "bitlk-partially-encrypted-aes-cbc-128" => 4,
        // cryptsetup will not activate a volume whose protection is suspended.
        "bitlk-aes-xts-128-clearkey-only" if engine == Engine::DmCrypt => 4,
        _ => 0,
    }
}

/// The images.conf key naming each protector kind's GUID.
const PROTECTOR_KEYS: [(&str, &str); 5] = [
    ("PW_VMK_GUID", "password"),
    ("RP_VMK_GUID", "recovery_password"),
    ("SK_VMK_GUID", "startup_key"),
    ("SC_VMK_GUID", "smart_card"),
    ("CLEARKEY_VMK_GUID", "clear_key"),
];

fn cipher_matches(conf: &str, ours: &str) -> bool {
    match conf {
        "aes-cbc-eboiv" => ours.starts_with("aes_cbc_") && !ours.ends_with("elephant"),
        "aes-cbc-elephant" => ours.starts_with("aes_cbc_") && ours.ends_with("elephant"),
        "aes-xts-plain64" => ours.starts_with("aes_xts_"),
        _ => false,
    }
}

/// `inspect --json` agrees with images.conf: GUID, cipher, and the protector GUIDs of each
/// kind; from the image file directly and through the daemon for the attached device.
#[test]
fn inspect_agrees_with_images_conf() {
    let _serial = serial();
    if !prerequisites(&["losetup"]) {
        return;
    }
    let daemon = TestDaemon::start("inspect");
    let mut events = daemon.events();
    for image in images() {
        let path = image.path();
        let (code, out, err) = daemon.cli(None, &["inspect", path.to_str().unwrap(), "--json"], "");
        assert_eq!(code, 0, "{}: {err}", image.name);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["guid"], image.get("GUID").unwrap(), "{}", image.name);
        let cipher = v["cipher"].as_str().unwrap();
        assert!(
            cipher_matches(image.get("CIPHER").unwrap(), cipher),
            "{}: {cipher}",
            image.name
        );
        // Every protector images.conf names is there, under its kind and no other. (Some
        // images carry protectors images.conf leaves out: the Windows 10 startup-key image
        // has a password protector whose password it does not give.)
        for (key, kind) in PROTECTOR_KEYS {
            let Some(guid) = image.get(key) else { continue };
            let kinds: Vec<&str> = v["protectors"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["guid"] == guid)
                .map(|p| p["kind"].as_str().unwrap())
                .collect();
            assert_eq!(kinds, [kind], "{}: protector {guid}", image.name);
        }
        // The recovery key's Key ID, as Windows shows it: its GUID's first 8 hex digits.
        if let Some(guid) = image.get("RP_VMK_GUID") {
            let id = guid[..8].to_uppercase();
            let p = v["protectors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["guid"] == guid)
                .unwrap();
            assert_eq!(p["key_id"], id.as_str(), "{}", image.name);
            let (_, human, _) = daemon.cli(None, &["inspect", path.to_str().unwrap()], "");
            assert!(human.contains(&format!("Key ID {id}")), "{human}");
        }
        let text = serde_json::to_string(&v).unwrap();
        for secret in [image.get("PW"), image.get("RP")].into_iter().flatten() {
            assert!(
                !text.contains(secret),
                "{}: inspect shows a secret",
                image.name
            );
        }

        let stick = Stick::plug(&path, false);
        let dev = stick.volume();
        let added = wait_event(&mut events, "the volume", |k, d| {
            k == EventKind::Added && d.device == dev
        });
        assert_eq!(added.guid.as_deref(), image.get("GUID"));
        assert!(!added.protectors.is_empty());
        let (code, out, err) = daemon.cli(None, &["inspect", &dev, "--json"], "");
        assert_eq!(code, 0, "{err}");
        let through_daemon: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(through_daemon, v, "{}", image.name);
        let (code, out, _) = daemon.cli(None, &["inspect", &dev], "");
        assert_eq!(code, 0);
        assert!(out.contains(image.get("GUID").unwrap()), "{out}");
        drop(stick);
        wait_event(&mut events, "the volume to go", |k, d| {
            k == EventKind::Removed && d.device == dev
        });
    }
}

#[test]
fn every_fixture_and_protector_on_the_native_engine() {
    every_fixture_and_protector(Engine::Native);
}

#[test]
fn every_fixture_and_protector_on_dislocker() {
    every_fixture_and_protector(Engine::Dislocker);
}

#[test]
#[ignore = "kernel path: runs inside a VM with Debian's kernel (tests/kernel_vm.rs)"]
fn every_fixture_and_protector_on_dm_crypt() {
    every_fixture_and_protector(Engine::DmCrypt);
}

/// The SHA-256 of the whole decrypted view, after `unlock --no-mount` with each protector.
fn every_fixture_and_protector(engine: Engine) {
    let _serial = serial();
    if !prerequisites(&["dislocker", "losetup"]) {
        return;
    }
    let daemon = TestDaemon::start_with(
        &format!("fixtures-{}", engine.as_str()),
        &engine_config(engine),
    );
    let mut events = daemon.events();
    let mut report = Vec::new();
    for image in images() {
        let mut methods: Vec<(&str, Vec<String>, String)> = Vec::new();
        if let Some(pw) = image.get("PW") {
            methods.push((
                "password",
                vec!["--password-stdin".into()],
                format!("{pw}\n"),
            ));
        }
        if let Some(rp) = image.get("RP") {
            methods.push((
                "recovery",
                vec!["--recovery-key-stdin".into()],
                format!("{rp}\n"),
            ));
        }
        if let Some(sk) = image.get("SK_VMK_GUID") {
            let bek = fixtures().join(format!("{}.BEK", sk.to_uppercase()));
            methods.push((
                "bek",
                vec!["--bek".into(), bek.display().to_string()],
                String::new(),
            ));
        }
        if image.get("CLEARKEY_VMK_GUID").is_some() {
            // No secret at all: the CLI finds the volume opens without one.
            methods.push(("clear", vec![], String::new()));
        }
        assert!(
            !methods.is_empty(),
            "{} has no protector in images.conf",
            image.name
        );

        let stick = Stick::plug(&image.path(), false);
        let dev = stick.volume();
        wait_event(&mut events, &format!("{} to appear", image.name), |k, d| {
            k == EventKind::Added && d.device == dev
        });
        // The first protector's view is hashed whole; under dm-crypt (in a VM without
        // acceleration) the others' first MiB is compared with it: the same key or not.
        let mut first_mib: Option<String> = None;
        for (method, flags, stdin) in methods {
            let mut args = vec!["unlock", dev.as_str(), "--no-mount"];
            args.extend(flags.iter().map(String::as_str));
            let (code, out, err) = daemon.cli(None, &args, &stdin);
            let want = expected(&image.name, engine);
            assert_eq!(code, want, "{} with {method}: {out}{err}", image.name);
            if code == 0 {
                let info = daemon.device(&dev).unwrap();
                let view = info.decrypted.clone().expect("decrypted view path");
                assert_eq!(info.mountpoint, None);
                assert_eq!(info.engine, Some(engine), "{} with {method}", image.name);
                if engine == Engine::Dislocker {
                    // Our key derivation, dislocker only serving the view.
                    let run = daemon.wait_log("running dislocker");
                    assert!(
                        run.contains(" -k /proc/self/fd/3"),
                        "{} with {method}: not the native key path: {run}",
                        image.name
                    );
                } else {
                    daemon.wait_log(&format!("decrypted by the {} engine", engine.as_str()));
                }
                let head = sha256_head(Path::new(&view), 1 << 20);
                match &first_mib {
                    Some(first) if engine == Engine::DmCrypt => {
                        assert_eq!(&head, first, "{} with {method}", image.name)
                    }
                    _ => {
                        let want_hash = image.get("SHA256SUM").expect("hash in images.conf");
                        assert_eq!(
                            sha256_file(Path::new(&view)),
                            want_hash,
                            "{} with {method}",
                            image.name
                        );
                        first_mib = Some(head);
                    }
                }
                let (code, _, err) = daemon.cli(None, &["unmount", &dev], "");
                assert_eq!(code, 0, "{err}");
                assert!(!Path::new(&view).exists());
                report.push(format!(
                    "{:<42} {method:<9} unlocked, SHA-256 matches",
                    image.name
                ));
            } else {
                let reason = err.trim();
                assert!(
                    reason.starts_with(&format!("guilocker: {dev}: ")),
                    "{reason}"
                );
                assert!(reason.len() > dev.len() + 14, "no reason given: {reason}");
                report.push(format!(
                    "{:<42} {method:<9} exit {code}: {reason}",
                    image.name
                ));
            }
            assert!(
                engines_for(&dev).is_empty(),
                "engine left running for {dev}"
            );
        }
        drop(stick);
        wait_event(&mut events, &format!("{} to go", image.name), |k, d| {
            k == EventKind::Removed && d.device == dev
        });
    }
    eprintln!(
        "\nfixture results ({} engine):\n{}",
        engine.as_str(),
        report.join("\n")
    );
}

/// SHA-256 of the first `len` bytes of `path`.
fn sha256_head(path: &Path, len: u64) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    std::io::copy(&mut file.take(len), &mut hasher).unwrap();
    format!("{:x}", hasher.finalize())
}

/// A password on a volume without a password protector is refused as wrong, never hangs.
#[test]
fn password_on_a_volume_without_one() {
    let _serial = serial();
    if !prerequisites(&["dislocker", "losetup"]) {
        return;
    }
    let daemon = TestDaemon::start("no-password");
    let mut events = daemon.events();
    let image = images()
        .into_iter()
        .find(|i| i.name == "bitlk-aes-xts-128-smart-card")
        .unwrap();
    let stick = Stick::plug(&image.path(), false);
    let dev = stick.volume();
    wait_event(&mut events, "the volume", |k, d| {
        k == EventKind::Added && d.device == dev
    });
    let (code, _, err) = daemon.cli(
        None,
        &["unlock", &dev, "--no-mount", "--password-stdin"],
        "anaconda\n",
    );
    assert_eq!(code, 3, "{err}");
    assert_eq!(
        err.trim(),
        format!("guilocker: {dev}: this drive has no password protector; use the recovery key")
    );
    let (code, _, err) = daemon.cli(
        None,
        &["unlock", &dev, "--no-mount", "--recovery-key-stdin"],
        "111111-111111-111111-111111-111111-111111-111111-111111\n",
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("wrong recovery key"), "{err}");
    let rp = image.get("RP").unwrap();
    let (code, _, err) = daemon.cli(
        None,
        &["unlock", &dev, "--no-mount", "--recovery-key-stdin"],
        &format!("{rp}\n"),
    );
    assert_eq!(code, 0, "{err}");
    // The first engine this daemon ran is the one for the right key.
    let lines = daemon.log_until("running /proc/self/exe engine");
    let refusals = lines
        .iter()
        .filter(|l| l.contains("wrong recovery key") || l.contains("no password protector"))
        .count();
    assert_eq!(
        refusals, 2,
        "both refusals come before any engine ran: {lines:#?}"
    );
    let (code, _, err) = daemon.cli(None, &["unmount", &dev], "");
    assert_eq!(code, 0, "{err}");
}
