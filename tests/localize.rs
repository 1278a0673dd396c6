//! The daemon's sentences in Korean, as the CLI, the dialog and the notifications show
//! them (`guilocker::i18n::localize`). A binary of its own: it sets this process's locale.

mod common;

/// The daemon's sentences as the CLI and the dialog show them: each one found, its values
/// kept, and sentences inside sentences translated too.
#[test]
fn the_daemons_sentences_in_korean() {
    if common::which("msgfmt").is_none() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "needs msgfmt");
        eprintln!("skipping: needs msgfmt (gettext)");
        return;
    }
    if !common::korean_locale_present() {
        return;
    }
    let catalogs = common::catalogs();
    // This process's locale: this binary's only test, so no other thread reads it.
    gettextrs::setlocale(gettextrs::LocaleCategory::LcAll, "ko_KR.UTF-8").expect("ko_KR.UTF-8");
    gettextrs::bindtextdomain(guilocker::i18n::DOMAIN, catalogs.to_str().unwrap()).unwrap();
    gettextrs::bind_textdomain_codeset(guilocker::i18n::DOMAIN, "UTF-8").unwrap();
    for (english, korean) in [
        (
            "/dev/sdb1: wrong recovery key",
            "/dev/sdb1: 복구 키가 틀렸습니다",
        ),
        (
            "/dev/sdb1: already unlocked (mounted at /media/alice/STICK (2))",
            "/dev/sdb1: 이미 잠금이 해제되어 있습니다 (/media/alice/STICK (2)에 마운트됨)",
        ),
        (
            "/dev/sdb1: not allowed: bob is not in the group 'plugdev' (see allowed_group in the config)",
            "/dev/sdb1: 허용되지 않습니다: bob은(는) 'plugdev' 그룹에 속하지 않습니다 (설정의 allowed_group 참고)",
        ),
        (
            "/dev/sdb1: cannot be opened here: encryption is still in progress; let Windows finish it, then try again",
            "/dev/sdb1: 여기서는 열 수 없습니다: 암호화가 아직 진행 중입니다. Windows에서 끝낸 다음 다시 하십시오",
        ),
        (
            "/media/alice/USB DISK: in use by bash (pid 7); close them, or use --force",
            "/media/alice/USB DISK: bash (pid 7)이(가) 사용 중입니다. 그 프로그램을 닫거나 --force를 쓰십시오",
        ),
        (
            "/dev/sdb1: cannot be opened here: this drive has no password protector; use the recovery key",
            "/dev/sdb1: 여기서는 열 수 없습니다: 이 드라이브에는 비밀번호 보호기가 없습니다. 복구 키을(를) 쓰십시오",
        ),
        (
            "/media/alice/STICK: in use by bash (pid 7); close them, or use --force",
            "/media/alice/STICK: bash (pid 7)이(가) 사용 중입니다. 그 프로그램을 닫거나 --force를 쓰십시오",
        ),
        // As the dialog gets them: without the device.
        (
            "not allowed: bob is not in the group 'plugdev' (see allowed_group in the config)",
            "허용되지 않습니다: bob은(는) 'plugdev' 그룹에 속하지 않습니다 (설정의 allowed_group 참고)",
        ),
        (
            "wrong password (note: dislocker cannot check passwords with non-ASCII characters)",
            "비밀번호가 틀렸습니다 (참고: dislocker는 ASCII가 아닌 문자가 든 비밀번호를 확인하지 못합니다)",
        ),
        // Not one of ours: as sent.
        ("/dev/sdb1: dislocker said something new", "/dev/sdb1: dislocker said something new"),
    ] {
        assert_eq!(guilocker::i18n::localize(english), korean);
    }
}
