//! Every Windows-made fixture image with every protector it has, unlocked with --no-mount:
//! the decrypted view must hash to images.conf, or the refusal must say why.

mod common;

use common::*;
use guilocker::protocol::EventKind;
use std::path::Path;

/// What stock dislocker 0.7.3 does with each fixture (images.conf's README lists it).
fn expected(image: &str, method: &str) -> i32 {
    match (image, method) {
        // Encryption was still running when the image was taken: dislocker cannot parse it.
        ("bitlk-partially-encrypted-aes-cbc-128", _) => 4,
        // dislocker cannot read the Windows 11 .BEK layout.
        ("bitlk-aes-xts-128-startup-key-win11", "bek") => 3,
        _ => 0,
    }
}

#[test]
fn every_fixture_and_protector() {
    let _serial = serial();
    if !prerequisites(&["dislocker", "losetup"]) {
        return;
    }
    let daemon = TestDaemon::start("fixtures");
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
        for (method, flags, stdin) in methods {
            let mut args = vec!["unlock", dev.as_str(), "--no-mount"];
            args.extend(flags.iter().map(String::as_str));
            let (code, out, err) = daemon.cli(None, &args, &stdin);
            let want = expected(&image.name, method);
            assert_eq!(code, want, "{} with {method}: {out}{err}", image.name);
            if code == 0 {
                let info = daemon.device(&dev).unwrap();
                let view = info.decrypted.clone().expect("decrypted view path");
                assert_eq!(info.mountpoint, None);
                let want_hash = image.get("SHA256SUM").expect("hash in images.conf");
                assert_eq!(
                    sha256_file(Path::new(&view)),
                    want_hash,
                    "{} with {method}",
                    image.name
                );
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
                dislockers_for(&dev).is_empty(),
                "dislocker left running for {dev}"
            );
        }
        drop(stick);
        wait_event(&mut events, &format!("{} to go", image.name), |k, d| {
            k == EventKind::Removed && d.device == dev
        });
    }
    eprintln!("\nfixture results:\n{}", report.join("\n"));
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
}
