use super::*;

#[test]
fn sizes_parse_with_units() {
    assert_eq!(parse_size(b"4096"), Some(4096));
    assert_eq!(parse_size(b"64k"), Some(65536));
    assert_eq!(parse_size(b"2M"), Some(2 << 20));
    assert_eq!(parse_size(b""), None);
    assert_eq!(parse_size(b"k"), None);
    assert_eq!(parse_size(b"12x"), None);
    assert_eq!(parse_size(b"-1"), None);
    assert_eq!(parse_size(b"99999999999999999999999"), None);
}

#[test]
fn shared_modes_round_trip_by_name() {
    for (mode, name) in MODES {
        assert_eq!(MODES.iter().filter(|(m, _)| *m == mode).count(), 1);
        assert!(!name.is_empty());
    }
    assert!(!set_shared_cache(b"bogus"));
}

#[test]
fn bucket_counts_are_powers_of_two_up_to_the_room() {
    assert!(!set_shared_buckets(b"0"));
    assert!(!set_shared_buckets(b"3"));
    assert!(!set_shared_buckets(b"8"));
    assert!(!set_shared_buckets(b"one"));
    assert_eq!(shared_buckets(), MAX_SHARED_BUCKETS);
    assert!(set_shared_buckets(b"4"));
    assert_eq!(shared_buckets(), 4);
}

#[test]
fn backends_parse_by_name() {
    assert!(!set_backend(b"jemalloc"));
    assert!(!set_backend(b""));
    // The setting itself (`spans_enabled` is also false under Miri).
    assert!(
        !SPANS_OFF.load(Relaxed),
        "an unknown name changed the default"
    );
    assert!(set_backend(b"spans"));
    assert!(!SPANS_OFF.load(Relaxed));
}

#[test]
fn debugging_words_parse_all_or_nothing() {
    assert_eq!(parse_debugging(0, b"fail=5,bogus"), None);
    assert_eq!(parse_debugging(0, b"fail=101"), None);
    assert_eq!(parse_debugging(0, b"fail=-1"), None);
    assert_eq!(parse_debugging(0, b"fail=1k"), None);
    assert_eq!(parse_debugging(0, b"fail="), None);
    assert_eq!(parse_debugging(0, b"fail=7"), Some(7));
    assert_eq!(parse_debugging(0, b"no-uaf,fail=100"), Some(100));
    assert_eq!(parse_debugging(DEBUG_UAF | 7, b"no-fail"), Some(DEBUG_UAF));
    assert_eq!(parse_debugging(DEBUG_UAF | 7, b"no-uaf,"), Some(7));
    assert_eq!(parse_debugging(7, b"fail"), Some(1));
    assert_eq!(parse_debugging(0, b"fail,no-fail"), Some(0));
    assert_eq!(parse_debugging(3, b""), Some(3));
    // The rate's bits stop below `canary`'s.
    assert_eq!(
        parse_debugging(DBG_CANARY, b"fail=100"),
        Some(DBG_CANARY | 100)
    );
    assert_eq!(
        parse_debugging(DBG_CANARY | 100, b"no-fail"),
        Some(DBG_CANARY)
    );
}

#[test]
fn uaf_implies_no_cache_and_no_global_unless_reenabled_after() {
    let both = DBG_NO_CACHE | DBG_NO_GLOBAL;
    assert_eq!(parse_debugging(0, b"uaf"), Some(DEBUG_UAF | both));
    assert_eq!(
        parse_debugging(0, b"uaf,cache"),
        Some(DEBUG_UAF | DBG_NO_GLOBAL)
    );
    assert_eq!(parse_debugging(0, b"uaf,global,cache"), Some(DEBUG_UAF));
    // Before it, they do not win: uaf comes last.
    assert_eq!(parse_debugging(0, b"cache,uaf"), Some(DEBUG_UAF | both));
    assert_eq!(parse_debugging(DEBUG_UAF | both, b"no-uaf"), Some(both));
}

#[test]
fn every_flag_word_sets_and_its_opposite_clears() {
    for (flag, set, clr, help) in FLAG_WORDS {
        assert!(!help.is_empty());
        let implied = if flag == DEBUG_UAF {
            DBG_NO_CACHE | DBG_NO_GLOBAL
        } else {
            0
        };
        assert_eq!(
            parse_debugging(0, set.as_bytes()),
            Some(flag | implied),
            "{set}"
        );
        assert_eq!(parse_debugging(!0, clr.as_bytes()), Some(!flag), "{clr}");
    }
    let all = parse_debugging(0, b"tag,integrity,caller,backup,no-cache").unwrap();
    assert_eq!(
        all,
        DBG_TAG | DBG_INTEGRITY | DBG_CALLER | DBG_BACKUP | DBG_NO_CACHE
    );
    assert_eq!(parse_debugging(0, b"tag,bogus"), None);
    assert_eq!(parse_debugging(0, b"Tag"), None);
}

#[test]
fn poison_takes_an_optional_byte() {
    let p = |s: &[u8]| parse_debugging(0, s);
    assert_eq!(p(b"poison"), Some(DBG_POISON));
    assert_eq!(p(b"poison=0x41"), Some(DBG_POISON | 0x41 << POISON_SHIFT));
    assert_eq!(p(b"poison=255"), Some(DBG_POISON | 0xff << POISON_SHIFT));
    assert_eq!(p(b"poison=256"), None);
    assert_eq!(p(b"poison=0x"), None);
    assert_eq!(p(b"poison=0xzz"), None);
    assert_eq!(p(b"poison="), None);
    let byte = 0x41 << POISON_SHIFT;
    assert_eq!(parse_debugging(DBG_POISON | byte, b"no-poison"), Some(byte));
}

/// `load_env` reads the variables only when one starts with `POOL_`.
#[test]
fn the_environment_is_scanned_for_the_prefix() {
    let has = |vars: &[&CStr]| {
        let mut env: Vec<*const libc::c_char> = vars.iter().map(|v| v.as_ptr()).collect();
        env.push(core::ptr::null());
        // SAFETY: a null-ended array of NUL-terminated strings.
        unsafe { has_pool_variable(env.as_ptr()) }
    };
    assert!(has(&[c"HOME=/", c"POOL_DEBUG=tag"]));
    assert!(has(&[c"POOL_="]));
    assert!(!has(&[]));
    assert!(!has(&[
        c"POOL=1",
        c"POO",
        c"",
        c"XPOOL_A=1",
        c"pool_debug=tag"
    ]));
    // SAFETY: null is allowed.
    assert!(!unsafe { has_pool_variable(core::ptr::null()) });
}
